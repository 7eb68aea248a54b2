/* viz_internal.h - what the renderers share: a buffered writer over mha_write_fn, argument
 * validation, the matrices of a view, the colour scale and label clean-up. Depends on the
 * public types and src/core only (never on the kernels). */
#ifndef MHA_VIZ_INTERNAL_H
#define MHA_VIZ_INTERNAL_H

#include "mha_viz.h"
#include "../core/internal.h"

#include <stddef.h>
#include <stdint.h>

/* Buffered output: chunks of up to 4 KiB go to fn. The first failure sticks (failed != 0)
 * and later writes are dropped; mha__viz_out_finish turns it into MHA_ERR_IO. */
typedef struct {
    mha_write_fn fn;
    void *user;
    int failed;
    size_t n;
    char buf[4096];
} viz_out;

void mha__viz_out_init(viz_out *o, mha_write_fn fn, void *user);
void mha__viz_put(viz_out *o, const void *data, size_t n);
void mha__viz_puts(viz_out *o, const char *s);
void mha__viz_printf(viz_out *o, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
mha_status mha__viz_out_finish(mha_ctx *ctx, const char *fn, viz_out *o);

/* A validated view: the matrices to draw (n panels of [L, S], owned, contiguous), their
 * titles, cleaned-up labels, and the resolved scale. */
typedef struct {
    int64_t H, L, S;
    int n;               /* panels: 1, or H for MHA_VIZ_ALL */
    float *m;            /* [n, L, S] */
    char **titles;       /* [n] */
    char **qtok, **ktok; /* [L], [S] or NULL; sanitized UTF-8 (ascii_only: 7-bit) */
    float vmin, vmax;    /* vmax > vmin */
    int auto_scale;      /* the scale came from the data (may be refitted to drawn cells) */
    const char *title;   /* opts->title or NULL (not sanitized) */
    /* m holds [n, R, C]: the means of f x f blocks of the weights (cut at the last row and
     * column), R = ceil(L / f), C = ceil(S / f); f = 1 (R = L, C = S) unless downsampled */
    int64_t f, R, C;
} viz_view;

/* Validates the common arguments and builds the view. ascii_only replaces every non-ASCII
 * code point of the labels by '?'. On error nothing is allocated. */
mha_status mha__viz_view_make(mha_ctx *ctx, const char *fn, const float *w, int64_t H, int64_t L,
                              int64_t S, const mha_viz_opts *opts, int all_heads, int ascii_only,
                              viz_view *v);
void mha__viz_view_free(viz_view *v);

/* Replaces v's matrices by the means of their f x f blocks (mha__viz_block_mean; f = 1: no
 * change), and refits an automatic scale to those means (what is drawn). MHA_ERR_NOMEM leaves
 * v as it was. */
mha_status mha__viz_view_downsample(mha_ctx *ctx, const char *fn, viz_view *v, int64_t f);
/* The mean of block (ci, cj) of m [L, S]: rows ci*f .. ci*f + f - 1 and columns cj*f ..
 * cj*f + f - 1, cut at the last row and column, summed in double. */
float mha__viz_block_mean(const float *m, int64_t L, int64_t S, int64_t f, int64_t ci, int64_t cj);

/* out[e] = the mean over h < H of w[h * LS + e], e < LS (summed in double, in head order). */
void mha__viz_average(const float *w, int64_t H, size_t LS, float *out);

/* Position of x on the scale, in [0, 1]. */
float mha__viz_norm(const viz_view *v, float x);

/* A copy of s with invalid UTF-8 and control characters replaced by '?' (and, with
 * ascii_only, every non-ASCII code point). NULL on allocation failure. */
char *mha__viz_clean(const char *s, int ascii_only);
/* Number of code points of a valid UTF-8 string. */
size_t mha__viz_cols(const char *s);
/* Byte length of the first max_cols code points of s. */
size_t mha__viz_prefix(const char *s, size_t max_cols);

/* Terminal display widths, by a fixed table (no locale, the same on every machine):
 * 2 columns for the East Asian Wide and Fullwidth ranges and the common emoji blocks, 0 for
 * combining marks, zero-width spaces/joiners, bidi marks and U+FE0F, 1 for the rest. */
int mha__viz_cp_width(uint32_t cp);
/* Decodes the code point at s (non-empty UTF-8) into *cp; returns its byte length. An invalid
 * byte (cleaned text has none) decodes as '?', one byte. */
size_t mha__viz_utf8_next(const char *s, uint32_t *cp);
/* Display width of s in columns. */
size_t mha__viz_width(const char *s);
/* Byte length of the longest prefix of s at most max_cols columns wide, never splitting a
 * character (a wide character that would straddle the limit is left out) and keeping the
 * zero-width code points that follow the last character kept; its width in *cols (may be
 * NULL), which is max_cols - 1 when a wide character was left out at the limit. */
size_t mha__viz_width_prefix(const char *s, size_t max_cols, size_t *cols);
/* Byte length of the first character cell of s (non-empty): any leading zero-width code
 * points, one code point of width >= 1, and the zero-width code points after it (combining
 * marks, joiners); its width (the base's: 1 or 2; 0 when s holds only zero-width code
 * points) in *cols (may be NULL). */
size_t mha__viz_cluster(const char *s, size_t *cols);

/* The bitmap font of the PNG renderer (font.c): printable ASCII in glyphs of 5 x 9 pixels
 * (rows 0-6 above the baseline, 7-8 descenders), advancing 6 pixels per character. */
#define MHA__VIZ_GLYPH_W 5
#define MHA__VIZ_GLYPH_H 9
#define MHA__VIZ_GLYPH_ADV 6
#define MHA__VIZ_CAP_H 7
#define MHA__VIZ_CUT '\x7f' /* the glyph that marks a cut label: three dots on the baseline */
/* 1 when pixel (x, y) of character ch's glyph is ink; bytes outside 32..127 draw as '?'. */
int mha__viz_glyph_ink(int ch, int x, int y);
/* Draws s with the font into img [ih, iw, 3] (pixels outside are clipped), each font pixel a
 * scale x scale square. (x, y) is the top-left corner of the text's box: 6 * scale * n wide
 * and 9 * scale high; upward: 9 * scale wide and 6 * scale * n high, read from the bottom
 * (turned a quarter to the left, as a rotated axis label). */
void mha__viz_text(uint8_t *img, int64_t iw, int64_t ih, int64_t x, int64_t y, const char *s,
                   int scale, int upward, const uint8_t rgb[3]);
/* Copies s into dst (max + 1 bytes): whole when it has at most max bytes, else its first
 * max - 1 and MHA__VIZ_CUT. Returns the length written. */
size_t mha__viz_cut(char *dst, const char *s, size_t max);

/* Writes XML-escaped text (&, <, >, ", '). */
void mha__viz_xml(viz_out *o, const char *s);

/* The file wrapper: runs render into a staged output (mha_outputs): path is replaced only
 * when the rendering is complete. */
typedef mha_status (*viz_render_fn)(mha_ctx *ctx, const float *w, int64_t H, int64_t L, int64_t S,
                                    const mha_viz_opts *opts, mha_write_fn fn, void *user);
mha_status mha__viz_to_file(mha_ctx *ctx, const char *fn, viz_render_fn render, const float *w,
                            int64_t H, int64_t L, int64_t S, const mha_viz_opts *opts,
                            const char *path);

#endif
