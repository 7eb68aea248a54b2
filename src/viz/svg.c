/* svg.c - attention weights as an SVG image: one panel per matrix, labels, a colour bar. */
#include "viz_internal.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define SVG_CHAR_W 7 /* estimated width of a character at font-size 11 */
#define SVG_LABEL_MAX 16

static int label_cols(char *const *tok, int64_t n) {
    int m = 0;
    for (int64_t i = 0; i < n; i++) {
        int c = (int)mha__viz_cols(tok[i]);
        if (c > m) m = c;
    }
    return m > SVG_LABEL_MAX ? SVG_LABEL_MAX : m;
}

/* A label, cut to SVG_LABEL_MAX code points with an ellipsis. */
static void label(viz_out *o, char *const *tok, int64_t i) {
    char num[32];
    const char *s = tok ? tok[i] : num;
    if (!tok) snprintf(num, sizeof num, "%lld", (long long)i);
    if (mha__viz_cols(s) <= SVG_LABEL_MAX) {
        mha__viz_xml(o, s);
        return;
    }
    size_t b = mha__viz_prefix(s, SVG_LABEL_MAX - 1);
    char buf[SVG_LABEL_MAX * 4 + 4];
    memcpy(buf, s, b);
    memcpy(buf + b, "\xe2\x80\xa6", 4);
    mha__viz_xml(o, buf);
}

static void quoted(viz_out *o, char *const *tok, int64_t i) {
    if (!tok) return;
    mha__viz_puts(o, " \"");
    mha__viz_xml(o, tok[i]);
    mha__viz_puts(o, "\"");
}

mha_status mha_viz_svg(mha_ctx *ctx, const float *w, int64_t H, int64_t L, int64_t S,
                       const mha_viz_opts *opts, mha_write_fn fn, void *user) {
    static const char *F = "mha_viz_svg";
    mha__clear(ctx);
    if (!fn) return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: fn: got NULL, expected a writer", F);
    if (opts && (opts->cell_px < 0 || opts->cell_px > 64))
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: opts.cell_px: got %d, expected 1 .. 64 (or 0: automatic)", F,
                        opts->cell_px);
    viz_view v;
    mha_status st = mha__viz_view_make(ctx, F, w, H, L, S, opts, 0, 0, &v);
    if (st) return st;
    int64_t mx = L > S ? L : S;
    int c = opts && opts->cell_px ? opts->cell_px : (int)(400 / mx);
    if (!(opts && opts->cell_px)) c = c < 4 ? 4 : c > 28 ? 28 : c;
    /* label every step-th row/column so that labels never overlap */
    int step = c >= 12 ? 1 : (12 + c - 1) / c;
    int qcols = v.qtok ? label_cols(v.qtok, L) : (int)snprintf(NULL, 0, "%lld", (long long)(L - 1));
    int kcols = v.ktok ? label_cols(v.ktok, S) : (int)snprintf(NULL, 0, "%lld", (long long)(S - 1));
    int lw = 10 + SVG_CHAR_W * qcols, kh = 10 + SVG_CHAR_W * kcols;
    int64_t pw = lw + S * c + 20, ph = 24 + L * c + kh + 12;
    int cols = 1;
    while (cols * cols < v.n) cols++;
    int rows = (v.n + cols - 1) / cols;
    int top = v.title ? 30 : 8;
    int64_t barh = L * c < 60 ? 60 : L * c > 240 ? 240 : L * c;
    int64_t W = 8 + cols * pw + 70, Hh = top + rows * ph + 8;
    if (Hh < top + 24 + barh + 20) Hh = top + 24 + barh + 20;

    viz_out o;
    mha__viz_out_init(&o, fn, user);
    mha__viz_printf(&o,
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
                    "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%lld\" height=\"%lld\" "
                    "viewBox=\"0 0 %lld %lld\" font-family=\"sans-serif\" font-size=\"11\">\n",
                    (long long)W, (long long)Hh, (long long)W, (long long)Hh);
    mha__viz_printf(&o, "<rect width=\"100%%\" height=\"100%%\" fill=\"#ffffff\"/>\n");
    if (v.title) {
        char *t = mha__viz_clean(v.title, 0);
        if (t) {
            mha__viz_printf(&o, "<text x=\"8\" y=\"20\" font-size=\"15\" font-weight=\"bold\">");
            mha__viz_xml(&o, t);
            mha__viz_puts(&o, "</text>\n");
            mha__free(t);
        }
    }
    for (int p = 0; p < v.n && !o.failed; p++) {
        int64_t x0 = 8 + (p % cols) * pw, y0 = top + (p / cols) * ph;
        int64_t gx = x0 + lw, gy = y0 + 24;
        const float *m = v.m + (size_t)p * (size_t)L * (size_t)S;
        mha__viz_printf(&o, "<g class=\"panel\" id=\"panel-%d\">\n", p);
        mha__viz_printf(&o, "<text x=\"%lld\" y=\"%lld\" font-size=\"13\" font-weight=\"bold\">",
                        (long long)gx, (long long)(y0 + 16));
        mha__viz_xml(&o, v.titles[p]);
        mha__viz_puts(&o, "</text>\n");
        for (int64_t i = 0; i < L; i++) {
            for (int64_t j = 0; j < S; j++) {
                float x = m[(size_t)i * (size_t)S + (size_t)j];
                uint8_t rgb[3];
                mha_viz_color(mha__viz_norm(&v, x), rgb);
                mha__viz_printf(&o,
                                "<rect class=\"cell\" x=\"%lld\" y=\"%lld\" width=\"%d\" "
                                "height=\"%d\" fill=\"#%02x%02x%02x\"><title>query %lld",
                                (long long)(gx + j * c), (long long)(gy + i * c), c, c, rgb[0],
                                rgb[1], rgb[2], (long long)i);
                quoted(&o, v.qtok, i);
                mha__viz_printf(&o, " \xe2\x86\x92 key %lld", (long long)j);
                quoted(&o, v.ktok, j);
                /* 4 decimals, or 4 significant digits below 1e-4 (a long sequence's weights
                 * would all read 0.0000) */
                const double a = fabs((double)x);
                mha__viz_printf(
                    &o, a != 0 && a < 1e-4 ? ": %.4g</title></rect>\n" : ": %.4f</title></rect>\n",
                    (double)x);
            }
        }
        mha__viz_printf(&o,
                        "<rect x=\"%lld\" y=\"%lld\" width=\"%lld\" height=\"%lld\" "
                        "fill=\"none\" stroke=\"#888888\" stroke-width=\"1\"/>\n",
                        (long long)gx, (long long)gy, (long long)(S * c), (long long)(L * c));
        for (int64_t i = 0; i < L; i += step) {
            mha__viz_printf(&o,
                            "<text x=\"%lld\" y=\"%lld\" text-anchor=\"end\" "
                            "dominant-baseline=\"middle\">",
                            (long long)(gx - 4), (long long)(gy + i * c + c / 2));
            label(&o, v.qtok, i);
            mha__viz_puts(&o, "</text>\n");
        }
        for (int64_t j = 0; j < S; j += step) {
            int64_t tx = gx + j * c + c / 2, ty = gy + L * c + 4;
            mha__viz_printf(&o,
                            "<text transform=\"translate(%lld,%lld) rotate(-90)\" "
                            "text-anchor=\"end\" dominant-baseline=\"middle\">",
                            (long long)tx, (long long)ty);
            label(&o, v.ktok, j);
            mha__viz_puts(&o, "</text>\n");
        }
        mha__viz_puts(&o, "</g>\n");
    }
    /* colour bar: vmax at the top */
    int64_t bx = 8 + cols * pw + 8, by = top + 24;
    mha__viz_puts(&o, "<defs><linearGradient id=\"mha-scale\" x1=\"0\" y1=\"1\" x2=\"0\" "
                      "y2=\"0\">");
    for (int k = 0; k <= 8; k++) {
        uint8_t rgb[3];
        mha_viz_color((float)k / 8.0f, rgb);
        mha__viz_printf(&o, "<stop offset=\"%g\" stop-color=\"#%02x%02x%02x\"/>", k / 8.0, rgb[0],
                        rgb[1], rgb[2]);
    }
    mha__viz_puts(&o, "</linearGradient></defs>\n");
    mha__viz_printf(&o,
                    "<rect class=\"colorbar\" x=\"%lld\" y=\"%lld\" width=\"14\" "
                    "height=\"%lld\" fill=\"url(#mha-scale)\" stroke=\"#888888\"/>\n",
                    (long long)bx, (long long)by, (long long)barh);
    mha__viz_printf(&o, "<text x=\"%lld\" y=\"%lld\" dominant-baseline=\"middle\">%.3g</text>\n",
                    (long long)(bx + 18), (long long)by, (double)v.vmax);
    mha__viz_printf(&o, "<text x=\"%lld\" y=\"%lld\" dominant-baseline=\"middle\">%.3g</text>\n",
                    (long long)(bx + 18), (long long)(by + barh), (double)v.vmin);
    mha__viz_puts(&o, "</svg>\n");
    mha__viz_view_free(&v);
    return mha__viz_out_finish(ctx, F, &o);
}

mha_status mha_viz_svg_file(mha_ctx *ctx, const float *w, int64_t H, int64_t L, int64_t S,
                            const mha_viz_opts *opts, const char *path) {
    return mha__viz_to_file(ctx, "mha_viz_svg_file", mha_viz_svg, w, H, L, S, opts, path);
}
