/* png.c - attention weights as a labelled PNG image (libpng): a title, one panel per matrix
 * with its name, query labels on the left and key labels written upwards below, and a colour
 * bar with its values; the text is drawn with the built-in bitmap font (font.c). The geometry
 * is documented in mha_viz.h so that tests and users can find each weight's square.
 *
 * Steps: validate (mha_viz_png), plan the layout from the labels' lengths (plan), paint the
 * RGB raster (paint_panel, paint_bar), encode it (encode). */
#include "viz_internal.h"

#include <stdio.h>
#include <string.h>
#ifdef MHA_HAVE_PNG
#include <png.h>
#include <setjmp.h>
#endif

#ifdef MHA_HAVE_PNG
typedef struct {
    viz_out *o;
} png_sink;

static void png_write_cb(png_structp png, png_bytep data, png_size_t n) {
    png_sink *s = png_get_io_ptr(png);
    mha__viz_put(s->o, data, n);
}
static void png_flush_cb(png_structp png) { (void)png; }

/* Encodes rgb [h, w, 3]. Returns 0, or -1 when libpng failed (it longjmps here). */
static int encode(viz_out *o, const uint8_t *rgb, int w, int h) {
    png_sink sink = {o};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    if (!png) return -1;
    png_infop info = png_create_info_struct(png);
    if (!info) {
        png_destroy_write_struct(&png, NULL);
        return -1;
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        return -1;
    }
    png_set_write_fn(png, &sink, png_write_cb, png_flush_cb);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 8, PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    /* one fixed filter and level rather than libpng's heuristics: the same bytes for the same
     * image on every libpng version (zlib's deflate at a given level has been stable) */
    png_set_filter(png, PNG_FILTER_TYPE_BASE, PNG_FILTER_UP);
    png_set_compression_level(png, 9);
    png_write_info(png, info);
    for (int y = 0; y < h; y++) png_write_row(png, (png_const_bytep)(rgb + (size_t)y * w * 3));
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    return 0;
}

/* ---- layout ------------------------------------------------------------------------------ */

#define PNG_MARGIN 8
#define PNG_GAP 12       /* between panels */
#define PNG_NAME_H 13    /* a panel's name (9) and the space under it (4) */
#define PNG_LABEL_MAX 16 /* characters of a token label */
#define PNG_NAME_MAX 32  /* characters of a panel name */
#define PNG_TITLE_MAX 64 /* characters of the title (drawn twice as large) */
#define PNG_BAR_H 12
#define PNG_MAX_SIDE 16384

static const uint8_t ink[3] = {30, 30, 30};

typedef struct {
    int64_t c;             /* cell size */
    int cols, rows;        /* the grid of panels */
    int64_t qstep, kstep;  /* every qstep-th query row and kstep-th key column is labelled */
    int64_t gutter, below; /* query labels left of a panel's cells, key labels below them */
    int64_t pw, ph;        /* a panel's box */
    int64_t top;           /* y of the first row of panels */
    int64_t bar_y;         /* y of the colour bar */
    int64_t iw, ih;        /* the image */
    char title[PNG_TITLE_MAX + 1];
    char vals[3][32]; /* the colour bar's vmin, middle and vmax */
} png_layout;

/* The smallest of 1, 2, 5, 10, 20, 50, ... cells that spans at least 12 pixels: labels (7
 * pixels of capitals, 9 with descenders) never touch and stay readable. */
static int64_t label_step(int64_t c) {
    for (int64_t m = 1;; m *= 10) {
        if (m * c >= 12) return m;
        if (2 * m * c >= 12) return 2 * m;
        if (5 * m * c >= 12) return 5 * m;
    }
}

/* Label i of an axis (its token, or its position), cut to PNG_LABEL_MAX characters. */
static size_t axis_label(char dst[PNG_LABEL_MAX + 1], char *const *tok, int64_t i) {
    char num[32];
    if (!tok) snprintf(num, sizeof num, "%lld", (long long)i);
    return mha__viz_cut(dst, tok ? tok[i] : num, PNG_LABEL_MAX);
}

/* Characters of the longest label drawn on an axis of n positions. */
static int64_t axis_chars(char *const *tok, int64_t n, int64_t step) {
    char buf[PNG_LABEL_MAX + 1];
    int64_t m = 0;
    for (int64_t i = 0; i < n; i += step) {
        int64_t k = (int64_t)axis_label(buf, tok, i);
        if (k > m) m = k;
    }
    return m;
}

static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* Sizes everything from the cell size and the lengths of the texts. */
static void plan(const viz_view *v, const char *title, int cell_px, png_layout *ly) {
    memset(ly, 0, sizeof *ly);
    int64_t mx = max64(v->L, v->S);
    ly->c = cell_px ? cell_px : 512 / mx;
    if (!cell_px) ly->c = ly->c < 2 ? 2 : ly->c > 32 ? 32 : ly->c;
    ly->cols = 1;
    while (ly->cols * ly->cols < v->n) ly->cols++;
    ly->rows = (v->n + ly->cols - 1) / ly->cols;
    ly->qstep = ly->kstep = label_step(ly->c);
    const int64_t adv = MHA__VIZ_GLYPH_ADV;
    ly->gutter = adv * axis_chars(v->qtok, v->L, ly->qstep) + 4;
    ly->below = 4 + adv * axis_chars(v->ktok, v->S, ly->kstep);
    int64_t name = 0;
    for (int p = 0; p < v->n; p++) {
        size_t k = strlen(v->titles[p]);
        name = max64(name, (int64_t)(k < PNG_NAME_MAX ? k : PNG_NAME_MAX));
    }
    ly->pw = ly->gutter + max64(v->S * ly->c, adv * name);
    ly->ph = PNG_NAME_H + v->L * ly->c + ly->below;
    int64_t tw = 0;
    if (title && *title) tw = 2 * adv * (int64_t)mha__viz_cut(ly->title, title, PNG_TITLE_MAX);
    ly->top = PNG_MARGIN + (tw ? 2 * MHA__VIZ_GLYPH_H + 8 : 0);
    float lo = v->vmin, hi = v->vmax;
    snprintf(ly->vals[0], sizeof ly->vals[0], "%.3g", (double)lo);
    snprintf(ly->vals[1], sizeof ly->vals[1], "%.3g", (double)(lo + (hi - lo) / 2));
    snprintf(ly->vals[2], sizeof ly->vals[2], "%.3g", (double)hi);
    int64_t vals =
        adv * (int64_t)(strlen(ly->vals[0]) + strlen(ly->vals[1]) + strlen(ly->vals[2])) +
        2 * PNG_GAP;
    int64_t content = ly->cols * ly->pw + (ly->cols - 1) * PNG_GAP;
    ly->iw = 2 * PNG_MARGIN + max64(max64(content, tw), vals);
    ly->bar_y = ly->top + ly->rows * ly->ph + (ly->rows - 1) * PNG_GAP + 8;
    ly->ih = ly->bar_y + PNG_BAR_H + 3 + MHA__VIZ_GLYPH_H + PNG_MARGIN;
}

/* Whether the planned image is within PNG_MAX_SIDE pixels a side. */
static int fits(const png_layout *ly) { return ly->iw <= PNG_MAX_SIDE && ly->ih <= PNG_MAX_SIDE; }

/* ---- painting ---------------------------------------------------------------------------- */

static void fill(uint8_t *img, int64_t iw, int64_t x, int64_t y, int64_t w, int64_t h,
                 const uint8_t rgb[3]) {
    for (int64_t r = y; r < y + h; r++) {
        uint8_t *px = img + ((size_t)r * (size_t)iw + (size_t)x) * 3;
        for (int64_t k = 0; k < w; k++, px += 3) memcpy(px, rgb, 3);
    }
}

/* Panel p: its name above the cells, query labels right-aligned in the gutter (centred on
 * their rows), key labels written upwards below, ending 4 pixels under the cells. */
static void paint_panel(uint8_t *img, const viz_view *v, const png_layout *ly, int p) {
    const int64_t c = ly->c, adv = MHA__VIZ_GLYPH_ADV, L = v->L, S = v->S;
    int64_t px = PNG_MARGIN + (p % ly->cols) * (ly->pw + PNG_GAP);
    int64_t py = ly->top + (p / ly->cols) * (ly->ph + PNG_GAP);
    int64_t gx = px + ly->gutter, gy = py + PNG_NAME_H;
    const float *m = v->m + (size_t)p * (size_t)L * (size_t)S;
    for (int64_t i = 0; i < L; i++)
        for (int64_t j = 0; j < S; j++) {
            uint8_t rgb[3];
            mha_viz_color(mha__viz_norm(v, m[(size_t)i * (size_t)S + (size_t)j]), rgb);
            fill(img, ly->iw, gx + j * c, gy + i * c, c, c, rgb);
        }
    char s[PNG_NAME_MAX + 1];
    mha__viz_cut(s, v->titles[p], PNG_NAME_MAX);
    mha__viz_text(img, ly->iw, ly->ih, gx, py, s, 1, 0, ink);
    int64_t centre = (c - MHA__VIZ_CAP_H) / 2; /* the capitals' rows centred on a cell */
    for (int64_t i = 0; i < L; i += ly->qstep) {
        int64_t n = (int64_t)axis_label(s, v->qtok, i);
        mha__viz_text(img, ly->iw, ly->ih, gx - 4 - adv * n, gy + i * c + centre, s, 1, 0, ink);
    }
    for (int64_t j = 0; j < S; j += ly->kstep) {
        axis_label(s, v->ktok, j);
        mha__viz_text(img, ly->iw, ly->ih, gx + j * c + centre, gy + L * c + 4, s, 1, 1, ink);
    }
}

/* The colour bar across the image (vmin on the left) and its values under it: vmin at its
 * left end, the middle value centred, vmax at its right end. */
static void paint_bar(uint8_t *img, const png_layout *ly) {
    const int64_t x0 = PNG_MARGIN, w = ly->iw - 2 * PNG_MARGIN, adv = MHA__VIZ_GLYPH_ADV;
    for (int64_t x = 0; x < w; x++) {
        uint8_t rgb[3];
        mha_viz_color((float)x / (float)(w > 1 ? w - 1 : 1), rgb);
        fill(img, ly->iw, x0 + x, ly->bar_y, 1, PNG_BAR_H, rgb);
    }
    int64_t ty = ly->bar_y + PNG_BAR_H + 3;
    int64_t n1 = (int64_t)strlen(ly->vals[1]), n2 = (int64_t)strlen(ly->vals[2]);
    mha__viz_text(img, ly->iw, ly->ih, x0, ty, ly->vals[0], 1, 0, ink);
    mha__viz_text(img, ly->iw, ly->ih, x0 + (w - adv * n1) / 2, ty, ly->vals[1], 1, 0, ink);
    mha__viz_text(img, ly->iw, ly->ih, x0 + w - adv * n2, ty, ly->vals[2], 1, 0, ink);
}
#endif

mha_status mha_viz_png(mha_ctx *ctx, const float *w, int64_t H, int64_t L, int64_t S,
                       const mha_viz_opts *opts, mha_write_fn fn, void *user) {
    static const char *F = "mha_viz_png";
    mha__clear(ctx);
    if (!fn) return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: fn: got NULL, expected a writer", F);
    if (opts && (opts->cell_px < 0 || opts->cell_px > 64))
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: opts.cell_px: got %d, expected 1 .. 64 (or 0: automatic)", F,
                        opts->cell_px);
#ifndef MHA_HAVE_PNG
    (void)w, (void)H, (void)L, (void)S, (void)user;
    return mha__err(ctx, MHA_ERR_UNSUPPORTED, "%s: png support not built (libpng not found)", F);
#else
    viz_view v;
    mha_status st = mha__viz_view_make(ctx, F, w, H, L, S, opts, 0, 1, &v);
    if (st) return st;
    char *title = v.title ? mha__viz_clean(v.title, 1) : NULL;
    if (v.title && !title) {
        mha__viz_view_free(&v);
        return mha__err(ctx, MHA_ERR_NOMEM, "%s: out of memory", F);
    }
    /* the cell size asked for, or the automatic one, shrunk down to 1 pixel until the image
     * fits: used when automatic, named in the message when asked for */
    const int asked = opts ? opts->cell_px : 0;
    png_layout ly;
    plan(&v, title, asked, &ly);
    int fit = asked ? asked : ly.c;
    while (!fits(&ly) && fit > 1) plan(&v, title, --fit, &ly);
    mha_status too_big = MHA_OK;
    if (!fits(&ly))
        too_big = mha__err(ctx, MHA_ERR_NOMEM,
                           "%s: image: got %lld x %lld pixels at 1 pixel per cell, expected at "
                           "most 16384 on a side (draw fewer heads or positions)",
                           F, (long long)ly.iw, (long long)ly.ih);
    else if (asked && fit != asked) {
        plan(&v, title, asked, &ly);
        too_big = mha__err(ctx, MHA_ERR_NOMEM,
                           "%s: image: got %lld x %lld pixels, expected at most 16384 on a side "
                           "(use a smaller opts.cell_px: %d fits)",
                           F, (long long)ly.iw, (long long)ly.ih, fit);
    }
    mha__free(title);
    if (too_big) {
        mha__viz_view_free(&v);
        return too_big;
    }
    uint8_t *img = mha__malloc((size_t)ly.iw * (size_t)ly.ih * 3);
    if (!img) {
        mha__viz_view_free(&v);
        return mha__err(ctx, MHA_ERR_NOMEM, "%s: out of memory (%lld x %lld image)", F,
                        (long long)ly.iw, (long long)ly.ih);
    }
    memset(img, 255, (size_t)ly.iw * (size_t)ly.ih * 3);
    if (ly.title[0]) mha__viz_text(img, ly.iw, ly.ih, PNG_MARGIN, PNG_MARGIN, ly.title, 2, 0, ink);
    for (int p = 0; p < v.n; p++) paint_panel(img, &v, &ly, p);
    paint_bar(img, &ly);
    mha__viz_view_free(&v);
    viz_out o;
    mha__viz_out_init(&o, fn, user);
    int rc = encode(&o, img, (int)ly.iw, (int)ly.ih);
    mha__free(img);
    if (rc != 0) return mha__err(ctx, MHA_ERR_NOMEM, "%s: libpng failed to encode the image", F);
    return mha__viz_out_finish(ctx, F, &o);
#endif
}

mha_status mha_viz_png_file(mha_ctx *ctx, const float *w, int64_t H, int64_t L, int64_t S,
                            const mha_viz_opts *opts, const char *path) {
    return mha__viz_to_file(ctx, "mha_viz_png_file", mha_viz_png, w, H, L, S, opts, path);
}
