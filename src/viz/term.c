/* term.c - attention weights as text: ASCII or Unicode shades, or 24-bit colour cells.
 *
 * A panel (one matrix) is built as lines of text with their display widths, so that a grid
 * can put panels side by side and pad them; nothing is wider than opts->width. Every width is
 * measured in terminal columns by mha__viz_width (wide CJK and emoji: 2, combining marks: 0), and
 * text is cut only at character boundaries. */
#include "viz_internal.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* A growable line with its width in terminal columns (escapes count 0). */
typedef struct {
    char *p;
    size_t n, cap;
    int cols;
} line;

typedef struct {
    int err; /* an allocation failed */
} arena;

static void add(arena *a, line *l, const char *s, size_t bytes, int cols) {
    if (a->err) return;
    if (l->n + bytes + 1 > l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        while (cap < l->n + bytes + 1) cap *= 2;
        char *q = mha__malloc(cap);
        if (!q) {
            a->err = 1;
            return;
        }
        if (l->n) memcpy(q, l->p, l->n);
        mha__free(l->p);
        l->p = q, l->cap = cap;
    }
    memcpy(l->p + l->n, s, bytes);
    l->n += bytes;
    l->p[l->n] = 0;
    l->cols += cols;
}

static void add_text(arena *a, line *l, const char *s) {
    add(a, l, s, strlen(s), (int)mha__viz_width(s));
}
static void add_esc(arena *a, line *l, const char *s) { add(a, l, s, strlen(s), 0); }
static void add_spaces(arena *a, line *l, int n) {
    for (int i = 0; i < n; i++) add(a, l, " ", 1, 1);
}
static void add_rep(arena *a, line *l, const char *s, int n) {
    for (int i = 0; i < n; i++) add_text(a, l, s);
}
/* Text cut to at most max columns (a wide character at the limit is left out). */
static void add_cut(arena *a, line *l, const char *s, int max) {
    if (max <= 0) return;
    size_t cols, b = mha__viz_width_prefix(s, (size_t)max, &cols);
    add(a, l, s, b, (int)cols);
}

/* A label in exactly max columns: padded, or cut with a marker ("…" or "~") when it is wider.
 * When a wide character would straddle the cut, a space pads (on the outer side). */
static void add_label(arena *a, line *l, const char *s, int max, int ascii, int right) {
    int c = (int)mha__viz_width(s);
    if (c <= max) {
        if (right) add_spaces(a, l, max - c);
        add_text(a, l, s);
        if (!right) add_spaces(a, l, max - c);
        return;
    }
    size_t cols, b = mha__viz_width_prefix(s, (size_t)(max - 1), &cols);
    int pad = max - 1 - (int)cols;
    if (right) add_spaces(a, l, pad);
    add(a, l, s, b, (int)cols);
    add_text(a, l, ascii ? "~" : "\xe2\x80\xa6");
    if (!right) add_spaces(a, l, pad);
}

/* Key labels below the axis are drawn vertically, one character cell per line, in the cw
 * columns of their key, on at most VLABEL_LINES lines. A cell wider than cw (a wide character
 * in one-column cells) cannot be drawn there: the label stops with a one-column marker
 * instead; a label with more cells than the lines is cut the same way, its last line the
 * marker (as add_label marks a cut). On line r, the label's r-th cell; *bytes 0 when the label
 * has ended (or stopped). Returns its width, or -1 when line r is the marker. */
#define VLABEL_LINES 8
static int vcell_uncut(const char *t, int r, int cw, size_t *off, size_t *bytes) {
    size_t at = 0, n = 0, w = 0;
    for (int k = 0; k <= r; k++) {
        at += n;
        if (!t[at]) {
            *off = at, *bytes = 0;
            return 0;
        }
        n = mha__viz_cluster(t + at, &w);
        if ((int)w > cw) {
            *off = at, *bytes = 0;
            return k == r ? -1 : 0;
        }
    }
    *off = at, *bytes = n;
    return (int)w;
}

static int vcell(const char *t, int r, int cw, size_t *off, size_t *bytes) {
    int c = vcell_uncut(t, r, cw, off, bytes);
    if (r == VLABEL_LINES - 1 && c > 0) { /* the last line: the marker if more follows */
        size_t off2, bytes2;
        if (vcell_uncut(t, r + 1, cw, &off2, &bytes2) != 0 || bytes2) {
            *bytes = 0;
            return -1;
        }
    }
    return c;
}

/* Number of lines of a vertical key label (its cells, up to and including a marker), at most
 * VLABEL_LINES (labels may be long: this stays O(VLABEL_LINES^2)). */
static int vlen(const char *t, int cw) {
    int r = 0;
    for (; r < VLABEL_LINES; r++) {
        size_t off, bytes;
        int w = vcell(t, r, cw, &off, &bytes);
        if (w < 0) return r + 1;
        if (!bytes) return r;
    }
    return VLABEL_LINES;
}

typedef struct {
    int mode;        /* mha_viz_term_mode */
    int cw, half, f; /* cell width, two rows per line, block size */
    int64_t nr, nc;  /* cells */
    int lab_max, G;  /* label width cap, gutter width */
    int pw;          /* panel width */
    int vertical;    /* key tokens drawn vertically below the axis */
    int vlines;      /* their number of lines */
    const char *ylabel, *xlabel;
} layout;

/* Cell (ci, cj) of panel p: a weight, or the mean of an f x f block once the view is
 * downsampled (mha__viz_view_downsample: v->m is then [n, nr, nc]). */
static float cell(const viz_view *v, int p, int64_t ci, int64_t cj) {
    return v->m[((size_t)p * (size_t)v->R + (size_t)ci) * (size_t)v->C + (size_t)cj];
}

static const char *const uni_shades[5] = {" ", "\xe2\x96\x91", "\xe2\x96\x92", "\xe2\x96\x93",
                                          "\xe2\x96\x88"};
static const char ascii_shades[] = " .:-=+*#@";

/* Shade index for t in [0, 1]: 0 (blank) below 5% of the scale, so that faint weights do not
 * fill the picture, then levels equal steps of 1/levels: 1 .. levels. */
#define SHADE_BLANK 0.05f
static int shade(float t, int levels) {
    if (t < SHADE_BLANK) return 0;
    int k = 1 + (int)(t * (float)levels);
    return k > levels ? levels : k;
}

static int digits(int64_t x) {
    int d = 1;
    while (x >= 10) x /= 10, d++;
    return d;
}

static void fmt_val(char *buf, size_t n, float x) {
    /* two decimals for ordinary weights; significant digits for large ones and for small ones
     * (a long sequence's weights, all below 0.01, read "<0.00" in every shade otherwise) */
    if (fabsf(x) < 100 && (x == 0 || fabsf(x) >= 0.01f)) snprintf(buf, n, "%.2f", (double)x);
    else snprintf(buf, n, "%.3g", (double)x);
}

static void plan(const viz_view *v, int mode, int W, layout *ly) {
    memset(ly, 0, sizeof *ly);
    ly->mode = mode;
    int tokens = v->qtok != NULL;
    ly->ylabel = tokens ? "Query" : "Query Position";
    ly->xlabel = v->ktok ? "Key" : "Key Position";
    ly->lab_max = (W - 3) / 4 < 12 ? (W - 3) / 4 : 12;
    /* the gutter as if no downsampling happened; downsampling only shortens labels */
    int lab = 0;
    if (tokens)
        for (int64_t i = 0; i < v->L; i++) {
            int c = (int)mha__viz_width(v->qtok[i]);
            if (c > lab) lab = c;
        }
    int num = digits(v->L - 1);
    if (lab > ly->lab_max) lab = ly->lab_max;
    if (num > lab) lab = num;
    ly->G = (int)strlen(ly->ylabel) > lab ? (int)strlen(ly->ylabel) : lab;
    int64_t avail = W - ly->G - 3;
    if (2 * v->S <= avail) ly->cw = 2, ly->f = 1;
    else if (mode == MHA_VIZ_TERM_COLOR) ly->cw = 1, ly->half = 1;
    else ly->cw = 1;
    if (ly->cw == 1) ly->f = v->S <= avail ? 1 : (int)((v->S + avail - 1) / avail);
    ly->nr = (v->L + ly->f - 1) / ly->f;
    ly->nc = (v->S + ly->f - 1) / ly->f;
    int area = (int)ly->nc * ly->cw;
    if (area < (int)strlen(ly->xlabel)) area = (int)strlen(ly->xlabel);
    ly->pw = ly->G + 3 + area;
    if (v->ktok && ly->f == 1) {
        ly->vertical = 1;
        for (int64_t j = 0; j < v->S && ly->vlines < VLABEL_LINES; j++) {
            int c = vlen(v->ktok[j], ly->cw);
            if (c > ly->vlines) ly->vlines = c;
        }
    }
}

/* The colour escape for a cell; half: upper in fg, lower in bg (lower < 0: none). */
static void color_esc(char *buf, size_t n, const viz_view *v, float up, float lo, int half,
                      int has_lo) {
    uint8_t a[3], b[3];
    mha_viz_color(mha__viz_norm(v, up), a);
    if (!half) {
        snprintf(buf, n, "\x1b[48;2;%d;%d;%dm", a[0], a[1], a[2]);
    } else if (has_lo) {
        mha_viz_color(mha__viz_norm(v, lo), b);
        snprintf(buf, n, "\x1b[38;2;%d;%d;%d;48;2;%d;%d;%dm", a[0], a[1], a[2], b[0], b[1], b[2]);
    } else {
        snprintf(buf, n, "\x1b[49;38;2;%d;%d;%dm", a[0], a[1], a[2]);
    }
}

/* Builds panel p into lines[0 .. count). Returns the number of lines. */
static int panel(arena *A, const viz_view *v, int p, const layout *ly, line *L0) {
    int k = 0;
    int ascii = ly->mode == MHA_VIZ_TERM_ASCII;
    /* title */
    add_cut(A, &L0[k++], v->titles[p], ly->pw);
    /* y axis label */
    add_label(A, &L0[k], ly->ylabel, ly->G, ascii, 1);
    add_text(A, &L0[k++], ascii ? " |" : " \xe2\x94\x82");
    int64_t lines = ly->half ? (ly->nr + 1) / 2 : ly->nr;
    for (int64_t r = 0; r < lines; r++) {
        line *l = &L0[k++];
        int64_t ci = ly->half ? 2 * r : r;
        char num[32];
        if (v->qtok && ly->f == 1 && !ly->half) {
            add_label(A, l, v->qtok[ci], ly->G, ascii, 1);
        } else {
            snprintf(num, sizeof num, "%lld", (long long)(ci * ly->f));
            add_label(A, l, num, ly->G, ascii, 1);
        }
        add_text(A, l, ascii ? " | " : " \xe2\x94\x82 ");
        char esc[64], prev[64] = "";
        for (int64_t cj = 0; cj < ly->nc; cj++) {
            float t = cell(v, p, ci, cj);
            if (ly->mode == MHA_VIZ_TERM_UNICODE) {
                add_rep(A, l, uni_shades[shade(mha__viz_norm(v, t), 4)], ly->cw);
            } else if (ascii) {
                char c = ascii_shades[shade(mha__viz_norm(v, t), 8)];
                for (int x = 0; x < ly->cw; x++) add(A, l, &c, 1, 1);
            } else {
                int has_lo = ly->half && ci + 1 < ly->nr;
                float lo = has_lo ? cell(v, p, ci + 1, cj) : 0;
                color_esc(esc, sizeof esc, v, t, lo, ly->half, has_lo);
                if (strcmp(esc, prev) != 0) add_esc(A, l, esc), strcpy(prev, esc);
                if (ly->half) add_text(A, l, "\xe2\x96\x80");
                else add_spaces(A, l, ly->cw);
            }
        }
        if (ly->mode == MHA_VIZ_TERM_COLOR) add_esc(A, l, "\x1b[0m");
    }
    /* x axis */
    line *ax = &L0[k++];
    add_spaces(A, ax, ly->G + 1);
    add_text(A, ax, ascii ? "+" : "\xe2\x94\x94");
    add_rep(A, ax, ascii ? "-" : "\xe2\x94\x80", (int)ly->nc * ly->cw + 1);
    int area = ly->pw - ly->G - 3;
    if (ly->vertical) {
        for (int r = 0; r < ly->vlines; r++) {
            line *l = &L0[k++];
            add_spaces(A, l, ly->G + 3);
            for (int64_t j = 0; j < v->S; j++) {
                size_t off, bytes;
                int c = vcell(v->ktok[j], r, ly->cw, &off, &bytes);
                if (c < 0) add_text(A, l, ascii ? "~" : "\xe2\x80\xa6"), c = 1;
                else if (bytes) add(A, l, v->ktok[j] + off, bytes, c);
                add_spaces(A, l, ly->cw - c);
            }
        }
    } else {
        line *l = &L0[k++];
        add_spaces(A, l, ly->G + 3);
        int need = digits((ly->nc - 1) * ly->f) + 1;
        int64_t step = 1;
        for (int64_t m = 1;; m *= 10) {
            if (1 * m * ly->cw >= need) {
                step = m;
                break;
            }
            if (2 * m * ly->cw >= need) {
                step = 2 * m;
                break;
            }
            if (5 * m * ly->cw >= need) {
                step = 5 * m;
                break;
            }
        }
        int col = 0;
        for (int64_t cj = 0; cj < ly->nc; cj += step) {
            char num[32];
            snprintf(num, sizeof num, "%lld", (long long)(cj * ly->f));
            int at = (int)cj * ly->cw;
            if (at + (int)strlen(num) > area) break;
            add_spaces(A, l, at - col);
            add_text(A, l, num);
            col = at + (int)strlen(num);
        }
    }
    line *xl = &L0[k++];
    int xlen = (int)strlen(ly->xlabel);
    add_spaces(A, xl, ly->G + 3 + (area - xlen) / 2);
    add_text(A, xl, ly->xlabel);
    return k;
}

/* Writes text word-wrapped to W columns. */
static void wrap(viz_out *o, const char *s, int W) {
    while (*s) {
        if ((int)mha__viz_width(s) <= W) {
            mha__viz_puts(o, s);
            mha__viz_puts(o, "\n");
            return;
        }
        size_t cut = mha__viz_width_prefix(s, (size_t)W, NULL), brk = cut;
        while (brk > 0 && s[brk] != ' ') brk--;
        if (brk == 0) brk = cut;
        mha__viz_put(o, s, brk);
        mha__viz_puts(o, "\n");
        s += brk;
        while (*s == ' ') s++;
    }
}

static void rtrim_put(viz_out *o, const line *l) {
    size_t n = l->n;
    while (n && l->p[n - 1] == ' ') n--;
    mha__viz_put(o, l->p, n);
    mha__viz_puts(o, "\n");
}

mha_status mha_viz_term(mha_ctx *ctx, const float *w, int64_t H, int64_t L, int64_t S,
                        const mha_viz_opts *opts, mha_write_fn fn, void *user) {
    static const char *F = "mha_viz_term";
    mha__clear(ctx);
    mha_viz_opts def = mha_viz_opts_default();
    if (!opts) opts = &def;
    if (!fn) return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: fn: got NULL, expected a writer", F);
    if ((int)opts->term_mode < MHA_VIZ_TERM_UNICODE || (int)opts->term_mode > MHA_VIZ_TERM_COLOR)
        return mha__err(
            ctx, MHA_ERR_INVALID_ARG,
            "%s: opts.term_mode: got %d, expected MHA_VIZ_TERM_UNICODE, _ASCII or _COLOR", F,
            (int)opts->term_mode);
    int W = opts->width ? opts->width : 80;
    if (W < 40 || W > 100000)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: opts.width: got %d, expected 40 .. 100000 columns (or 0: 80)", F,
                        opts->width);
    int mode = (int)opts->term_mode, ascii = mode == MHA_VIZ_TERM_ASCII;
    viz_view v;
    mha_status st = mha__viz_view_make(ctx, F, w, H, L, S, opts, 0, ascii, &v);
    if (st) return st;
    layout ly;
    plan(&v, mode, W, &ly);
    /* f x f blocks averaged into cells; the scale refitted to those means */
    if ((st = mha__viz_view_downsample(ctx, F, &v, ly.f))) {
        mha__viz_view_free(&v);
        return st;
    }
    int per = (int)((ly.half ? (ly.nr + 1) / 2 : ly.nr) + 4 + (ly.vertical ? ly.vlines : 1));
    int gap = 3, across = (W + gap) / (ly.pw + gap);
    if (across < 1) across = 1;
    if (across > v.n) across = v.n;
    arena A = {0};
    line *lines = mha__calloc((size_t)per * (size_t)across, sizeof *lines);
    if (!lines) {
        mha__viz_view_free(&v);
        return mha__err(ctx, MHA_ERR_NOMEM, "%s: out of memory", F);
    }
    viz_out o;
    mha__viz_out_init(&o, fn, user);
    if (v.title) {
        char *t = mha__viz_clean(v.title, ascii);
        if (!t) A.err = 1;
        else wrap(&o, t, W);
        mha__free(t);
    }
    for (int p0 = 0; p0 < v.n && !A.err; p0 += across) {
        int cnt = v.n - p0 < across ? v.n - p0 : across;
        for (int q = 0; q < cnt; q++) panel(&A, &v, p0 + q, &ly, lines + (size_t)q * per);
        if (p0) mha__viz_puts(&o, "\n");
        for (int r = 0; r < per && !A.err; r++) {
            line out = {0};
            for (int q = 0; q < cnt; q++) {
                line *l = &lines[(size_t)q * per + r];
                if (q) add_spaces(&A, &out, gap);
                if (l->n) add(&A, &out, l->p, l->n, l->cols);
                if (q + 1 < cnt) add_spaces(&A, &out, ly.pw - l->cols);
            }
            if (!A.err) rtrim_put(&o, &out);
            mha__free(out.p);
        }
        for (size_t i = 0; i < (size_t)per * (size_t)across; i++) {
            mha__free(lines[i].p);
            memset(&lines[i], 0, sizeof lines[i]);
        }
    }
    mha__free(lines);
    if (!A.err) {
        char lo[32], hi[32], buf[256];
        fmt_val(lo, sizeof lo, v.vmin);
        fmt_val(hi, sizeof hi, v.vmax);
        if (ly.f > 1) {
            snprintf(buf, sizeof buf,
                     "downsampled to fit %d columns: each cell is the mean of a %dx%d block "
                     "(%lld x %lld weights as %lld x %lld cells)",
                     W, ly.f, ly.f, (long long)L, (long long)S, (long long)ly.nr, (long long)ly.nc);
            wrap(&o, buf, W);
        }
        if (ly.half) wrap(&o, "each line shows two query rows: upper and lower half", W);
        if (mode == MHA_VIZ_TERM_COLOR) {
            mha__viz_printf(&o, "scale %s ", lo);
            for (int i = 0; i < 16; i++) {
                uint8_t c[3];
                mha_viz_color((float)i / 15.0f, c);
                mha__viz_printf(&o, "\x1b[48;2;%d;%d;%dm ", c[0], c[1], c[2]);
            }
            mha__viz_printf(&o, "\x1b[0m %s\n", hi);
        } else {
            /* Unicode: "blank <0.05, ░ <0.25, ▒ <0.50, ▓ <0.75, █ to 1.00" in the scale's
             * units; ASCII (8 levels): the first threshold and the step */
            int levels = ascii ? 8 : 4;
            float span = v.vmax - v.vmin;
            char num[32], step[32];
            fmt_val(num, sizeof num, v.vmin + SHADE_BLANK * span);
            size_t n;
            if (ascii) {
                fmt_val(step, sizeof step, span / (float)levels);
                n = (size_t)snprintf(buf, sizeof buf,
                                     "shades \"%s\": blank <%s, then one per "
                                     "%s up to %s",
                                     ascii_shades + 1, num, step, hi);
            } else {
                n = (size_t)snprintf(buf, sizeof buf, "shades: blank <%s", num);
                for (int k = 1; k <= levels && n < sizeof buf; k++) {
                    if (k < levels)
                        fmt_val(num, sizeof num, v.vmin + (float)k / (float)levels * span);
                    n += (size_t)snprintf(buf + n, sizeof buf - n, ", %s %s%s", uni_shades[k],
                                          k < levels ? "<" : "to ", k < levels ? num : hi);
                }
            }
            wrap(&o, buf, W);
        }
    }
    mha__viz_view_free(&v);
    if (A.err) return mha__err(ctx, MHA_ERR_NOMEM, "%s: out of memory", F);
    return mha__viz_out_finish(ctx, F, &o);
}

mha_status mha_viz_term_file(mha_ctx *ctx, const float *w, int64_t H, int64_t L, int64_t S,
                             const mha_viz_opts *opts, const char *path) {
    return mha__viz_to_file(ctx, "mha_viz_term_file", mha_viz_term, w, H, L, S, opts, path);
}
