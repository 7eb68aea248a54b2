/* mha_viz.h - drawing attention weights: terminal, SVG, PNG and a self-contained HTML page.
 *
 * OVERVIEW
 *   The renderers take a block of attention weights w[H, L, S] (contiguous floats: H heads,
 *   L queries, S keys, e.g. what mha_module_forward returns with average_weights = 0 for one
 *   batch element) and draw one of three views, chosen by mha_viz_opts.view:
 *     MHA_VIZ_HEAD      one head (opts.head),
 *     MHA_VIZ_AVERAGE   the mean over the H heads (what PyTorch returns by default),
 *     MHA_VIZ_ALL       every head, as a grid of panels sharing one colour scale.
 *   Optional token labels name the query rows and key columns.
 *
 *   Outputs:
 *     mha_viz_term   text for a terminal: ASCII, Unicode shading, or 24-bit colour cells;
 *                    fits opts.width columns, downsampling long sequences (and saying so);
 *     mha_viz_svg    an SVG image (no dependency), a <title> tooltip on every cell;
 *     mha_viz_png    a PNG image with its labels in a built-in bitmap font (libpng;
 *                    MHA_ERR_UNSUPPORTED when built without it);
 *     mha_viz_html   one HTML file with inline CSS, JS and data, no network access: a head
 *                    selector, token columns joined by lines whose opacity is the weight
 *                    (hover a token to see its row or column), a heatmap per head, and
 *                    per-head statistics; large views drawn as block means (and saying so),
 *                    so that the page stays small (about 13 MB at most, plus labels).
 *   Every writer outputs through an mha_write_fn callback (mha.h); the *_file wrappers write
 *   through mha_outputs (mha.h): path is replaced only when the rendering is complete, so an
 *   error never leaves a partial file nor changes an earlier one.
 *
 * USAGE
 *     float w[4 * 6 * 6];                                    // [H=4, L=6, S=6]
 *     int64_t ws[3] = {4, 6, 6};
 *     mha_tensor wt = mha_tensor_make(w, 3, ws);
 *     mha_forward_opts fo = mha_forward_opts_default();
 *     fo.average_weights = 0;                                // per-head weights
 *     mha_module_forward(ctx, m, &fo, &x, NULL, NULL, NULL, &y, &wt);   // x: [6, E]
 *
 *     const char *toks[6] = {"the", "cat", "sat", "on", "the", "mat"};
 *     mha_viz_opts vo = mha_viz_opts_default();
 *     vo.view = MHA_VIZ_ALL;
 *     vo.query_tokens = toks;                                // keys: the same (self-attention)
 *     vo.term_mode = MHA_VIZ_TERM_UNICODE;
 *     vo.width = 100;
 *     mha_viz_term(ctx, w, 4, 6, 6, &vo, my_write, stdout); // my_write: fwrite to user
 *     mha_viz_html_file(ctx, w, 4, 6, 6, &vo, "attention.html");
 *
 * CONVENTIONS
 *   As in mha.h: every call returns mha_status with a message in the context; ctx may be
 *   NULL. Nothing is printed. Every call is thread safe for distinct contexts; the inputs are
 *   only read. Output is a pure function of the inputs (byte-identical on every run).
 *   Text (tokens, titles) is UTF-8; invalid bytes and control characters are drawn as "?".
 *   Terminal widths are columns, from a fixed table (no locale: the same on every machine):
 *   2 for the East Asian Wide and Fullwidth ranges (CJK, kana, Hangul, fullwidth forms) and
 *   the common emoji blocks (U+1F300-1F64F, U+1F900-1F9FF), 0 for combining marks, zero-width
 *   spaces and joiners (U+200B-200F) and U+FE0F, 1 for everything else. Text is cut only at
 *   character boundaries; where a wide character would straddle a cut, a space pads instead.
 *   Cut labels end with a marker ("…", "~" in ASCII mode) within their width. Key labels
 *   drawn vertically get 8 lines: a longer one shows 7 characters and the marker; in
 *   one-column cells they also stop with the marker at their first wide character (it cannot
 *   fit its key's column). An emoji ZWJ sequence counts as the sum of
 *   its parts: a terminal that draws it as one glyph shows that line narrower, never wider.
 */
#ifndef MHA_VIZ_H
#define MHA_VIZ_H

#include "mha.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Which matrix to draw. */
typedef enum {
    MHA_VIZ_HEAD = 0,    /* one head: opts.head */
    MHA_VIZ_AVERAGE = 1, /* the mean over heads */
    MHA_VIZ_ALL = 2      /* every head, in a grid */
} mha_viz_view;

/* How mha_viz_term draws cells. */
typedef enum {
    MHA_VIZ_TERM_UNICODE = 0, /* shades " ░▒▓█", two columns per cell */
    MHA_VIZ_TERM_ASCII = 1,   /* shades " .:-=+*#@", plain 7-bit text */
    MHA_VIZ_TERM_COLOR = 2    /* 24-bit ANSI colour cells; half blocks ("▀", two query rows
                                 per line) when two columns per key do not fit */
} mha_viz_term_mode;

typedef struct {
    mha_viz_view view; /* default MHA_VIZ_HEAD */
    int64_t head;      /* the head for MHA_VIZ_HEAD, in [0, H); default 0 */
    /* Query labels [L] and key labels [S], UTF-8, borrowed (each non-NULL). NULL: positions.
     * key_tokens == NULL with query_tokens set and L == S uses the query tokens for the keys
     * (self-attention), unless key_positions (below) is set. */
    const char *const *query_tokens;
    const char *const *key_tokens;
    const char *const *head_titles; /* [H] optional; default "head 0", "head 1", ... */
    const char *title;              /* optional line above everything (HTML: page title) */
    /* Colour scale: values map linearly from vmin to vmax, clamped. vmax <= vmin (the default
     * 0, 0) means automatic: vmin = min(0, smallest value), vmax = the largest value shown
     * (over all panels, so a grid is comparable). */
    float vmin, vmax;
    mha_viz_term_mode term_mode; /* default MHA_VIZ_TERM_UNICODE */
    int width;   /* terminal columns, 40 .. 100000; 0 = 80. No output line is wider. */
    int cell_px; /* SVG/PNG cell size in pixels, 1..64; 0 = automatic */
    /* nonzero: the keys are labelled by position when key_tokens is NULL, even with
     * query_tokens and L == S (cross-attention whose keys have no labels); default 0 */
    int key_positions;
} mha_viz_opts;

MHA_API mha_viz_opts mha_viz_opts_default(void);
/* Every renderer below accepts opts == NULL for the defaults. Shades in the terminal: blank
 * below 5% of the scale, then equal steps (Unicode " ░▒▓█": quarters; ASCII ".:-=+*#@":
 * eighths); the legend line gives the values. */

/* Per-head statistics (also shown by the HTML page). */
typedef struct {
    double entropy;      /* mean over queries of the row entropy, in bits (0: one-hot rows) */
    double max_entropy;  /* log2(S): the entropy of a uniform row */
    int64_t top_key;     /* the key with the largest mean attention over queries */
    double top_key_mean; /* that mean */
    double max_weight;   /* the largest single weight */
} mha_viz_stats;

/* Statistics of each of the H heads of w [H, L, S] into stats[H] (caller-owned).
 * Rows that sum to 0 (fully masked) count as entropy 0. MHA_ERR_INVALID_ARG for NULL
 * pointers, sizes < 1, or a non-finite weight. */
MHA_API mha_status mha_viz_head_stats(mha_ctx *ctx, const float *w, int64_t H, int64_t L, int64_t S,
                                      mha_viz_stats *stats);

/* Text rendering of w [H, L, S] (contiguous, read only) for a terminal, through fn(user, ...).
 * Layout (Unicode mode, one head, no tokens):
 *       head 0
 *       Query Position │
 *                    0 │ ████░░
 *                    1 │ ░░████
 *                      └────────
 *                        0 1 2
 *                         Key Position
 *       shades: blank <0.05, ░ <0.25, ▒ <0.50, ▓ <0.75, █ to 1.00
 * With tokens, rows are labelled by query tokens and keys by vertical labels below the axis.
 * A grid (MHA_VIZ_ALL) puts as many panels side by side as opts->width allows. When the cells
 * do not fit, f x f blocks are averaged into one cell and a line says so. Colour mode emits
 * ANSI escapes "\x1b[38;2;R;G;Bm" / "\x1b[48;2;R;G;Bm" and resets with "\x1b[0m" at the end
 * of each line; the caller decides whether the terminal wants it (isatty, $NO_COLOR).
 * Returns MHA_ERR_INVALID_ARG (NULL pointers, sizes < 1, head out of range, width < 40,
 * non-finite weights, a NULL token), MHA_ERR_NOMEM, or MHA_ERR_IO when fn returns nonzero. */
MHA_API mha_status mha_viz_term(mha_ctx *ctx, const float *w, int64_t H, int64_t L, int64_t S,
                                const mha_viz_opts *opts, mha_write_fn fn, void *user);

/* SVG image of the chosen view: each panel has a title, query labels on the left, key labels
 * below (rotated), one <rect class="cell"> per drawn weight with a <title> tooltip, e.g.
 *     query 2 "cat" → key 1 "the": 0.4123
 * (the tokens in double quotes, XML-escaped in the file; without tokens: query 2 → key 1:
 * 0.4123; a weight below 1e-4 in 4 significant digits, 3.217e-06), and a colour bar. A grid
 * has ceil(sqrt(H)) columns. Colours: a perceptual dark-blue → green → yellow map
 * (mha_viz_color). Errors as mha_viz_term. */
MHA_API mha_status mha_viz_svg(mha_ctx *ctx, const float *w, int64_t H, int64_t L, int64_t S,
                               const mha_viz_opts *opts, mha_write_fn fn, void *user);

/* PNG image (8-bit RGB) of the chosen view, labelled: the title, each panel's name, the query
 * labels left of its cells, the key labels written upwards below them, and a colour bar with
 * its values (vmin, the middle, vmax). Text uses a built-in bitmap font: printable ASCII in
 * 6 x 9 pixel cells (others drawn as '?'); labels longer than 16 characters, panel names
 * longer than 32 and titles longer than 64 are cut with a mark (three dots on the baseline).
 * Rows (columns) less than 12 px apart are labelled every 1, 2, 5, 10, 20, 50, ... cells.
 * Exact geometry, c = cell size, q and k = the characters of the longest query and key label
 * drawn, t = of the longest panel name:
 *   panels: n = 1 (HEAD, AVERAGE) or H (ALL), cols = ceil(sqrt(n)) (1 for n == 1),
 *           rows = ceil(n / cols); a panel is pw = 6q + 4 + max(S*c, 6t) wide and
 *           ph = 13 + L*c + 4 + 6k high, with 12 px between panels;
 *   top    = 8, plus 26 with a title (drawn twice as large: 18 px high, at (8, 8));
 *   width  = 16 + max(cols * pw + (cols - 1) * 12, 12 * title characters,
 *                     6 * characters of the three values + 24)
 *   height = top + rows * ph + (rows - 1) * 12 + 8 + 12 + 3 + 9 + 8;
 *   weight (i, j) of panel p fills the c x c square at
 *   x = 8 + (p % cols) * (pw + 12) + 6q + 4 + j*c, y = top + (p / cols) * (ph + 12) + 13 + i*c
 *   with mha_viz_color(value); the panel's name is 13 px above its cells; the colour bar
 *   spans width - 16 px at y = height - 32, 12 px high; background white, text dark grey.
 * c = opts->cell_px, or automatically about 512 / max(L, S) clamped to [2, 32]. The bytes are
 * a pure function of the inputs (one fixed PNG filter and compression level).
 * MHA_ERR_UNSUPPORTED "png support not built (libpng not found)" without libpng; MHA_ERR_NOMEM
 * when the image would exceed 16384 pixels on a side. Other errors as mha_viz_term. */
MHA_API mha_status mha_viz_png(mha_ctx *ctx, const float *w, int64_t H, int64_t L, int64_t S,
                               const mha_viz_opts *opts, mha_write_fn fn, void *user);

/* A self-contained HTML page (inline CSS, JS and data; no network requests) showing ALL heads
 * and their average, whatever opts->view (which only picks the head selected at first):
 * a head selector; the token view (query tokens left, key tokens right, a line per pair with
 * opacity = weight; hovering a token keeps only its lines and highlights its row or column in
 * the heatmap); a heatmap of the selected head; small heatmaps of every head; a table of
 * mha_viz_head_stats. Hovering a heatmap cell shows its weight
 * (query 2 “cat” → key 1 “the”: 0.4123; below 1e-4 in 4 significant digits: 0.000003217).
 * Large views: with more than 256 queries or keys, or more than 2^20 weights over the H heads,
 * the page draws (and holds) the means of f x f blocks instead, f the smallest size that keeps
 * at most 256 cells a side and 2^20 means in all, and says so under the heatmap ("downsampled
 * to fit the page: each cell is the mean of a 8x8 block (2000 x 2000 weights as 250 x 250
 * cells)"); hovering a cell then shows the block's ranges and mean ("queries 136–143 → keys
 * 1624–1631 (8 × 8 weights): mean 0.9303"); the token view's lines and the heatmap's labels are
 * left out. The statistics always come from every weight. So the page's size is bounded
 * whatever L and S: at most 12 bytes per value stored (2^20 of them: 12.6 MB), plus about
 * 20 KB, 150 bytes per head, and the labels (JSON-escaped: at most 6 bytes per byte of each
 * token and head title); a 2000 x 2000 view of 2 heads is 1 MB and opens in about 2 s.
 * Errors as mha_viz_term. */
MHA_API mha_status mha_viz_html(mha_ctx *ctx, const float *w, int64_t H, int64_t L, int64_t S,
                                const mha_viz_opts *opts, mha_write_fn fn, void *user);

/* File wrappers: the rendering staged and committed through mha_outputs (MHA_ERR_IO with the
 * path and the system's reason on failure; no temporary file is left). */
MHA_API mha_status mha_viz_term_file(mha_ctx *ctx, const float *w, int64_t H, int64_t L, int64_t S,
                                     const mha_viz_opts *opts, const char *path);
MHA_API mha_status mha_viz_svg_file(mha_ctx *ctx, const float *w, int64_t H, int64_t L, int64_t S,
                                    const mha_viz_opts *opts, const char *path);
MHA_API mha_status mha_viz_png_file(mha_ctx *ctx, const float *w, int64_t H, int64_t L, int64_t S,
                                    const mha_viz_opts *opts, const char *path);
MHA_API mha_status mha_viz_html_file(mha_ctx *ctx, const float *w, int64_t H, int64_t L, int64_t S,
                                     const mha_viz_opts *opts, const char *path);

/* The colour map shared by every renderer: t in [0, 1] (clamped; NaN as 0) to 8-bit RGB,
 * piecewise linear through five anchors from dark blue (t = 0) to yellow (t = 1). */
MHA_API void mha_viz_color(float t, uint8_t rgb[3]);

#ifdef __cplusplus
}
#endif
#endif /* MHA_VIZ_H */
