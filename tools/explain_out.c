/* explain_out.c - where `mha explain` writes its steps: a terminal (sections, aligned tables,
 * heatmaps drawn by mha_viz_term) or one self-contained HTML page (inline CSS, no script, no
 * request: each step a <section> with an id, matrices as tables coloured with mha_viz_color).
 * Everything goes through the ex_out's writer; the first failed write sticks. */
#include "explain.h"
#include "mha_viz.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------------
 * Writing
 * ------------------------------------------------------------------------------------------- */
static void put(ex_out *o, const char *s, size_t n) {
    if (o->failed || o->skip || !n) return;
    if (o->write(o->user, s, n)) o->failed = 1;
}
static void puts_(ex_out *o, const char *s) { put(o, s, strlen(s)); }

static void vprint(ex_out *o, const char *fmt, va_list ap) {
    char buf[1024];
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    put(o, buf, n < 0 ? 0 : (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
}
static void print(ex_out *o, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
static void print(ex_out *o, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vprint(o, fmt, ap);
    va_end(ap);
}

/* Text as HTML: &, <, >, " and ' escaped. */
static void html_text(ex_out *o, const char *s) {
    for (const char *p = s; *p; p++) {
        const char *esc = *p == '&'    ? "&amp;"
                          : *p == '<'  ? "&lt;"
                          : *p == '>'  ? "&gt;"
                          : *p == '"'  ? "&quot;"
                          : *p == '\'' ? "&#39;"
                                       : NULL;
        if (esc) puts_(o, esc);
        else put(o, p, 1);
    }
}

/* Text as it is (terminal) or escaped (HTML). */
static void html_or_plain(ex_out *o, const char *s) {
    if (o->fmt == EX_HTML) html_text(o, s);
    else puts_(o, s);
}

/* Code points of UTF-8 text (continuation bytes not counted): its width in a terminal for
 * the text a walkthrough labels rows with (wide characters count as one: labels are short). */
static size_t text_cols(const char *s, size_t bytes) {
    size_t n = 0;
    for (size_t i = 0; i < bytes; i++) n += ((unsigned char)s[i] & 0xC0) != 0x80;
    return n;
}

/* Bytes of s's first max code points, cut at a character boundary. */
static size_t text_prefix(const char *s, size_t max) {
    size_t i = 0, n = 0;
    for (; s[i]; i++) {
        if (((unsigned char)s[i] & 0xC0) != 0x80 && n++ == max) break;
    }
    return i;
}

void ex_label(char *buf, size_t cap, const char *const *labels, int64_t i, size_t max) {
    if (!labels) {
        snprintf(buf, cap, "%lld", (long long)i);
        return;
    }
    size_t n = text_prefix(labels[i], max);
    if (n >= cap) n = cap - 1;
    for (size_t k = 0; k < n; k++) buf[k] = (unsigned char)labels[i][k] < 32 ? '?' : labels[i][k];
    buf[n] = 0;
}

/* Writes s wrapped to lines of at most cols code points, each after indent spaces (the first
 * after nothing: the caller wrote its start). */
static void wrapped(ex_out *o, const char *s, size_t indent, size_t cols) {
    size_t line = 0;
    while (*s) {
        size_t word = strcspn(s, " "), wc = text_cols(s, word);
        if (line && line + 1 + wc > cols) {
            print(o, "\n%*s", (int)indent, "");
            line = 0;
        } else if (line) {
            puts_(o, " ");
            line++;
        }
        put(o, s, word);
        line += wc;
        s += word;
        while (*s == ' ') s++;
    }
    puts_(o, "\n");
}

/* ---------------------------------------------------------------------------------------------
 * The page
 * ------------------------------------------------------------------------------------------- */
static const char page_css[] =
    "body { margin: 0; padding: 20px 28px; background: #f4f6fa; color: #1d2430;\n"
    "  font: 14px/1.45 system-ui, -apple-system, \"Segoe UI\", Roboto, sans-serif; }\n"
    "h1 { font-size: 20px; margin: 0 0 4px; }\n"
    ".sub { color: #667085; margin: 0 0 18px; max-width: 72em; }\n"
    "section { background: #fff; border-radius: 10px; padding: 12px 18px; margin: 0 0 16px;\n"
    "  box-shadow: 0 1px 3px rgba(16, 24, 40, .12); }\n"
    "h2 { font-size: 16px; margin: 0 0 8px; }\n"
    "p { margin: 4px 0; max-width: 72em; }\n"
    ".k { display: inline-block; width: 5em; color: #667085; }\n"
    "pre.formula { background: #f0f3f9; border-radius: 6px; padding: 6px 10px; margin: 6px 0;\n"
    "  font: 13px/1.4 ui-monospace, Menlo, Consolas, monospace; white-space: pre-wrap; }\n"
    ".why { font-style: italic; }\n"
    ".note { color: #667085; }\n"
    "table.m { border-collapse: collapse; font: 12px ui-monospace, Menlo, Consolas, monospace;\n"
    "  display: inline-table; vertical-align: top; margin: 6px 22px 6px 0;\n"
    "  font-variant-numeric: tabular-nums; }\n"
    "table.m caption { text-align: left; font: 600 13px system-ui, sans-serif; padding: 2px 0; }\n"
    "table.m th { color: #667085; font-weight: 500; padding: 2px 6px; text-align: right; }\n"
    "table.m td { padding: 3px 7px; text-align: right; border: 1px solid #fff; }\n"
    "table.m td.ninf { background: #d0d5dd; color: #475467; }\n"
    "p.check { font-weight: 600; font-family: ui-monospace, Menlo, Consolas, monospace; }\n";

void ex_doc_begin(ex_out *o, const char *title, const char *subtitle) {
    if (o->fmt == EX_TERM) {
        print(o, "%s\n", title);
        wrapped(o, subtitle, 0, (size_t)(o->width < 100 ? o->width : 100));
        return;
    }
    puts_(o, "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
             "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
             "<title>");
    html_text(o, title);
    puts_(o, "</title>\n<style>\n");
    puts_(o, page_css);
    puts_(o, "</style>\n</head>\n<body>\n<h1>");
    html_text(o, title);
    puts_(o, "</h1>\n<p class=\"sub\">");
    html_text(o, subtitle);
    puts_(o, "</p>\n");
}

static void section_end(ex_out *o) {
    if (o->fmt == EX_HTML && o->open) {
        o->open = 0;
        puts_(o, "</div>\n</section>\n");
    }
    o->skip = 0;
}

void ex_doc_end(ex_out *o) {
    section_end(o);
    if (o->fmt == EX_HTML) puts_(o, "</body>\n</html>\n");
}

void ex_section(ex_out *o, int number, const char *id, const char *title) {
    section_end(o);
    o->skip = number > 0 && o->only > 0 && number != o->only;
    char head[160];
    if (number > 0) snprintf(head, sizeof head, "%d. %s", number, title);
    else snprintf(head, sizeof head, "%s", title);
    if (o->fmt == EX_TERM) {
        int fill = (o->width < 100 ? o->width : 100) - 4 - (int)text_cols(head, strlen(head));
        print(o, "\n== %s ", head);
        for (int i = 0; i < fill; i++) puts_(o, "=");
        puts_(o, "\n");
        return;
    }
    print(o, "<section id=\"%s\">\n<h2>", id);
    html_text(o, head);
    puts_(o, "</h2>\n<div class=\"body\">\n");
    o->open = 1;
}

void ex_text(ex_out *o, ex_text_kind kind, const char *fmt, ...) {
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    static const char *const keys[] = {"shape", "formula", "why", "note", ""};
    if (kind == EX_CHECK) {
        if (o->fmt == EX_HTML) puts_(o, "<p class=\"check\">");
        html_or_plain(o, buf);
        puts_(o, o->fmt == EX_HTML ? "</p>\n" : "\n");
        return;
    }
    if (o->fmt == EX_TERM) {
        print(o, "%-9s", keys[kind]);
        if (kind == EX_FORMULA) { /* lines as written, aligned under the first */
            for (const char *p = buf; *p;) {
                size_t n = strcspn(p, "\n");
                put(o, p, n);
                puts_(o, "\n");
                p += n;
                if (*p == '\n' && *++p) puts_(o, "         ");
            }
            return;
        }
        wrapped(o, buf, 9, (size_t)(o->width < 100 ? o->width : 100) - 9);
        return;
    }
    if (kind == EX_FORMULA) {
        puts_(o, "<pre class=\"formula\">");
        html_text(o, buf);
        puts_(o, "</pre>\n");
        return;
    }
    static const char *const cls[] = {"shape", "", "why", "note", ""};
    print(o, "<p class=\"%s\"><span class=\"k\">%s</span> ", cls[kind], keys[kind]);
    html_text(o, buf);
    puts_(o, "</p>\n");
}

/* ---------------------------------------------------------------------------------------------
 * Tables
 * ------------------------------------------------------------------------------------------- */
#define LABEL_MAX 12      /* code points of a row or column label */
#define TABLE_COLS_MAX 64 /* columns a table shows at most */

/* A number as the tables show it: 4 decimals, or 3 significant digits in e-notation for a
 * table whose values are all tiny or large. */
static void number(char *buf, size_t cap, double v, int sci) {
    if (isnan(v)) snprintf(buf, cap, "nan");
    else if (isinf(v)) snprintf(buf, cap, v < 0 ? "-inf" : "inf");
    else snprintf(buf, cap, sci ? "%.3e" : "%.4f", v);
}

/* What is shown of a table: the window, the number format and the colour scale. */
typedef struct {
    int64_t R, C;   /* rows and columns shown */
    int sci;        /* e-notation */
    double lo, hi;  /* the smallest and largest finite value shown */
    char note[160]; /* what was left out, or "" */
} table_view;

static void table_view_make(const ex_table *t, table_view *tv) {
    const int64_t mr = t->max_rows ? t->max_rows : EX_WINDOW;
    const int64_t mc = t->max_cols ? t->max_cols : EX_WINDOW;
    tv->R = t->rows < mr ? t->rows : mr;
    tv->C = t->cols < mc ? t->cols : mc;
    if (tv->C > TABLE_COLS_MAX) tv->C = TABLE_COLS_MAX;
    double big = 0;
    tv->lo = INFINITY, tv->hi = -INFINITY;
    for (int64_t i = 0; i < tv->R; i++)
        for (int64_t j = 0; j < tv->C; j++) {
            const double x = t->v[i * t->ld + j];
            if (!isfinite(x)) continue;
            if (fabs(x) > big) big = fabs(x);
            if (x < tv->lo) tv->lo = x;
            if (x > tv->hi) tv->hi = x;
        }
    tv->sci = big >= 1e4 || (big > 0 && big < 1e-3);
    tv->note[0] = 0;
    if (tv->R < t->rows || tv->C < t->cols)
        snprintf(tv->note, sizeof tv->note, "(showing %lld of %lld rows and %lld of %lld columns)",
                 (long long)tv->R, (long long)t->rows, (long long)tv->C, (long long)t->cols);
}

/* One cell of an HTML table: coloured by its place on the table's scale. */
static void html_cell(ex_out *o, const ex_table *t, const table_view *tv, double x) {
    char num[40];
    number(num, sizeof num, x, tv->sci);
    if (!isfinite(x)) {
        print(o, "<td class=\"ninf\">%s</td>", num);
        return;
    }
    if (t->scale == EX_PLAIN) {
        print(o, "<td>%s</td>", num);
        return;
    }
    const double pos = t->scale == EX_PROB ? x
                       : tv->hi > tv->lo   ? (x - tv->lo) / (tv->hi - tv->lo)
                                           : 0.5;
    uint8_t rgb[3];
    mha_viz_color((float)pos, rgb);
    const double luma = (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]) / 255;
    print(o, "<td style=\"background:#%02x%02x%02x;color:%s\">%s</td>", rgb[0], rgb[1], rgb[2],
          luma > 0.55 ? "#1d2430" : "#ffffff", num);
}

/* A table's label cell: <th>label</th>. */
static void html_label(ex_out *o, const char *const *labels, int64_t i) {
    char lab[64];
    ex_label(lab, sizeof lab, labels, i, LABEL_MAX);
    puts_(o, "<th>");
    html_text(o, lab);
    puts_(o, "</th>");
}

static void html_table(ex_out *o, const ex_table *t, const table_view *tv) {
    print(o, "<table class=\"m\"><caption>");
    html_text(o, t->title);
    print(o, " [%lld, %lld]</caption>\n<tr><th></th>", (long long)t->rows, (long long)t->cols);
    for (int64_t j = 0; j < tv->C; j++) html_label(o, t->clab, j);
    puts_(o, "</tr>\n");
    for (int64_t i = 0; i < tv->R; i++) {
        puts_(o, "<tr>");
        html_label(o, t->rlab, i);
        for (int64_t j = 0; j < tv->C; j++) html_cell(o, t, tv, t->v[i * t->ld + j]);
        puts_(o, "</tr>\n");
    }
    puts_(o, "</table>\n");
    if (tv->note[0]) print(o, "<p class=\"note\">%s</p>\n", tv->note);
}

/* Right-aligned columns as wide as the widest number, or their own label. */
static void term_table(ex_out *o, const ex_table *t, const table_view *tv) {
    char num[40], lab[64];
    size_t w[TABLE_COLS_MAX], nw = 0, rw = 0;
    for (int64_t i = 0; i < tv->R; i++) {
        ex_label(lab, sizeof lab, t->rlab, i, LABEL_MAX);
        if (text_cols(lab, strlen(lab)) > rw) rw = text_cols(lab, strlen(lab));
        for (int64_t j = 0; j < tv->C; j++) {
            number(num, sizeof num, t->v[i * t->ld + j], tv->sci);
            if (strlen(num) > nw) nw = strlen(num);
        }
    }
    print(o, "\n  %s  [%lld, %lld]\n  %*s", t->title, (long long)t->rows, (long long)t->cols,
          (int)rw, "");
    for (int64_t j = 0; j < tv->C; j++) {
        ex_label(lab, sizeof lab, t->clab, j, LABEL_MAX);
        const size_t lw = text_cols(lab, strlen(lab));
        w[j] = lw > nw ? lw : nw;
        print(o, "  %*s%s", (int)(w[j] - lw), "", lab);
    }
    puts_(o, "\n");
    for (int64_t i = 0; i < tv->R; i++) {
        ex_label(lab, sizeof lab, t->rlab, i, LABEL_MAX);
        print(o, "  %s%*s", lab, (int)(rw - text_cols(lab, strlen(lab))), "");
        for (int64_t j = 0; j < tv->C; j++) {
            number(num, sizeof num, t->v[i * t->ld + j], tv->sci);
            print(o, "  %*s", (int)w[j], num);
        }
        puts_(o, "\n");
    }
    if (tv->note[0]) print(o, "  %s\n", tv->note);
}

void ex_table_write(ex_out *o, const ex_table *t) {
    if (o->skip || o->failed) return;
    table_view tv;
    table_view_make(t, &tv);
    if (o->fmt == EX_HTML) html_table(o, t, &tv);
    else term_table(o, t, &tv);
}

void ex_heatmap(ex_out *o, const float *w, int64_t H, int64_t L, int64_t S, const char *const *qtok,
                const char *const *ktok, int cross) {
    if (o->fmt != EX_TERM || o->skip || o->failed) return;
    mha_viz_opts vo = mha_viz_opts_default();
    vo.view = MHA_VIZ_ALL;
    vo.query_tokens = qtok;
    vo.key_tokens = ktok;
    vo.key_positions = cross;
    vo.term_mode = o->color ? MHA_VIZ_TERM_COLOR : MHA_VIZ_TERM_UNICODE;
    vo.width = o->width;
    vo.vmin = 0, vo.vmax = 1; /* probabilities: one scale for every head */
    puts_(o, "\n");
    mha_status st = mha_viz_term(o->ctx, w, H, L, S, &vo, o->write, o->user);
    if (st != MHA_OK && o->viz_status == MHA_OK) o->viz_status = st;
}
