/* png.c - attention weights as a PNG image (libpng), with the geometry documented in
 * mha_viz.h so that tests and users can find each weight's square. */
#include "viz_internal.h"

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
    png_write_info(png, info);
    for (int y = 0; y < h; y++) png_write_row(png, (png_const_bytep)(rgb + (size_t)y * w * 3));
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    return 0;
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
    int64_t mx = L > S ? L : S;
    int64_t c = opts && opts->cell_px ? opts->cell_px : 512 / mx;
    if (!(opts && opts->cell_px)) c = c < 2 ? 2 : c > 32 ? 32 : c;
    int cols = 1;
    while (cols * cols < v.n) cols++;
    int rows = (v.n + cols - 1) / cols;
    int64_t iw = 16 + cols * S * c + (cols - 1) * 8;
    int64_t ih = 16 + rows * L * c + (rows - 1) * 8 + 8 + 12;
    if (iw > 16384 || ih > 16384) {
        mha__viz_view_free(&v);
        return mha__err(ctx, MHA_ERR_NOMEM,
                        "%s: image: got %lld x %lld pixels, expected at most 16384 on a side "
                        "(use a smaller opts.cell_px)", F, (long long)iw, (long long)ih);
    }
    uint8_t *img = mha__malloc((size_t)iw * (size_t)ih * 3);
    if (!img) {
        mha__viz_view_free(&v);
        return mha__err(ctx, MHA_ERR_NOMEM, "%s: out of memory (%lld x %lld image)", F,
                        (long long)iw, (long long)ih);
    }
    memset(img, 255, (size_t)iw * (size_t)ih * 3);
    for (int p = 0; p < v.n; p++) {
        int64_t x0 = 8 + (p % cols) * (S * c + 8), y0 = 8 + (p / cols) * (L * c + 8);
        const float *m = v.m + (size_t)p * (size_t)L * (size_t)S;
        for (int64_t i = 0; i < L; i++)
            for (int64_t j = 0; j < S; j++) {
                uint8_t rgb[3];
                mha_viz_color(mha__viz_norm(&v, m[(size_t)i * (size_t)S + (size_t)j]), rgb);
                for (int64_t y = y0 + i * c; y < y0 + (i + 1) * c; y++) {
                    uint8_t *px = img + ((size_t)y * (size_t)iw + (size_t)(x0 + j * c)) * 3;
                    for (int64_t x = 0; x < c; x++, px += 3) memcpy(px, rgb, 3);
                }
            }
    }
    /* the colour bar, vmin on the left */
    int64_t by = ih - 8 - 12;
    for (int64_t x = 8; x < iw - 8; x++) {
        uint8_t rgb[3];
        mha_viz_color((float)(x - 8) / (float)(iw - 17 > 0 ? iw - 17 : 1), rgb);
        for (int64_t y = by; y < by + 12; y++)
            memcpy(img + ((size_t)y * (size_t)iw + (size_t)x) * 3, rgb, 3);
    }
    mha__viz_view_free(&v);
    viz_out o;
    mha__viz_out_init(&o, fn, user);
    int rc = encode(&o, img, (int)iw, (int)ih);
    mha__free(img);
    if (rc != 0) return mha__err(ctx, MHA_ERR_NOMEM, "%s: libpng failed to encode the image", F);
    return mha__viz_out_finish(ctx, F, &o);
#endif
}

mha_status mha_viz_png_file(mha_ctx *ctx, const float *w, int64_t H, int64_t L, int64_t S,
                            const mha_viz_opts *opts, const char *path) {
    return mha__viz_to_file(ctx, "mha_viz_png_file", mha_viz_png, w, H, L, S, opts, path);
}
