/* explain.h - what the files of `mha explain` share.
 *
 *   explain_math.c   the walkthrough's arithmetic: plain double-precision loops over matrices
 *                    that carry, beside each value, a bound on the rounding error a float32
 *                    computation of that value may have (the forward, the backward, and the
 *                    FlashAttention-2 tiles);
 *   explain_out.c    the page the steps are written to: a terminal (aligned tables, heatmaps
 *                    from mha_viz_term) or one self-contained HTML file (coloured tables);
 *   explain_steps.c  the steps themselves: title, shape, formula, why, and their numbers;
 *   cmd_explain.c    the command: options, the layer (the built-in example or the user's), the
 *                    fused kernel's run and the check against it.
 */
#ifndef MHA_EXPLAIN_H
#define MHA_EXPLAIN_H

#include "mha.h"

#include <stdint.h>

/* ---------------------------------------------------------------------------------------------
 * Matrices with a rounding-error bound (explain_math.c)
 *
 * Every value v of the walkthrough is computed in double, and beside it e >= 0 bounds how far
 * a float32 computation of the same formula may be from it: the inputs and parameters are
 * float32 numbers (e = 0), and each operation adds what float32 rounding can add, with
 * Higham's bound for a sum of n products, gamma_n = n u / (1 - n u), u = 2^-24:
 *   C = alpha A B:   e_C = |alpha| (gamma_n |A| |B| + e_A |B| + |A| e_B + e_A e_B)
 * with n = K, plus 2 when alpha != 1 (alpha's own rounding and the product by it) and 1 when
 * C is accumulated into, and bounds for the softmax (explain_math.c: a perturbation bound that
 * stays small for nearly one-hot rows, at most 1 + rounding since P is in [0, 1]); a head's
 * output, a convex combination of its value rows, is off by at most their range (plus
 * rounding), whatever the softmax's bound says. Each operation may also
 * underflow: results below FLT_MIN may be flushed to zero, an absolute error of at most
 * EX_TINY each. The fused kernel passes when every output element is within its e: a bound
 * derived from the magnitudes and the sizes, not a constant.
 * ------------------------------------------------------------------------------------------- */
typedef struct {
    double *v, *e; /* element (i, j) at [i * ld + j] */
    int64_t rows, cols, ld;
} ex_mat;

/* float32's unit roundoff, 2^-24, and its smallest normal number (what a result that
 * underflows may lose, with flush-to-zero). */
#define EX_U (1.0 / 16777216.0)
#define EX_TINY 1.1754943508222875e-38

/* Rows r0 .. r0 + rows - 1, columns c0 .. c0 + cols - 1 of m (no copy). */
ex_mat ex_view(ex_mat m, int64_t r0, int64_t c0, int64_t rows, int64_t cols);
/* C = alpha op(A) op(B) (+ C when accumulate), op(X) = X or X^T (t != 0), with the error
 * bound above. C must not overlap A or B. */
void ex_mm(ex_mat c, double alpha, ex_mat a, int ta, ex_mat b, int tb, int accumulate);

/* ---------------------------------------------------------------------------------------------
 * One walkthrough: the layer, its input, every intermediate of the forward and the backward
 * ------------------------------------------------------------------------------------------- */
typedef struct {
    /* sizes: B batches, L queries, S keys, E features, H heads of D = E / H */
    int64_t B, L, S, E, H, D, kdim, vdim;
    double scale; /* the score scale: 1 / sqrt(D) unless --scale */
    int cross;    /* key and value inputs of their own */
    int bias;     /* the layer has biases (else bq .. bo are 0) */
    mha_mask mask;
    /* the parameters, in PyTorch's layout ([out, in]; biases [1, E], zero without bias) */
    ex_mat wq, wk, wv, wo, bq, bk, bv, bo;
    /* inputs: x [B*L, E] (the query), xk [B*S, kdim], xv [B*S, vdim] (x itself for
     * self-attention) */
    ex_mat x, xk, xv;
    /* forward: projections q [B*L, E], k, v [B*S, E] (head h = columns h*D .. h*D + D - 1);
     * scores per (batch, head) stacked: raw Q K^T, scaled, masked, softmax P [B*H*L, S];
     * o [B*L, E] the heads' outputs side by side (their concatenation); y [B*L, E] */
    ex_mat q, k, v, raw, scaled, masked, p, o, y;
    /* backward: dy [B*L, E] (given); do_ = dy Wo; dwo, dbo; dv [B*S, E]; dp, ds [B*H*L, S];
     * drow [B*H*L, 1] (D_i = dO_i . O_i); dq [B*L, E], dk [B*S, E]; input gradients dx
     * [B*L, E] (self-attention: the whole input's), dxk [B*S, kdim], dxv [B*S, vdim] (cross);
     * parameter gradients dwq, dwk, dwv, dbq, dbk, dbv */
    ex_mat dy, do_, dwo, dbo, dv, dp, drow, ds, dq, dk, dx, dxk, dxv, dwq, dwk, dwv, dbq, dbk, dbv;
    ex_mat ones; /* [1, max(B*L, B*S)] of 1: bias gradients are ones^T dX */
    int has_backward;
    double *mem; /* one allocation behind every matrix */
} ex_run;

/* Allocates every matrix of r (the backward's too when backward), from the sizes set before
 * (B, L, S, E, H, kdim, vdim, cross); sets D. 0, or -1 out of memory. */
int ex_run_alloc(ex_run *r, int backward);
void ex_run_free(ex_run *r);

/* Multiply-adds and doubles a run of these sizes needs (for refusing what would take too
 * long or too much memory before allocating anything). */
double ex_run_cost(int64_t B, int64_t L, int64_t S, int64_t E, int64_t H, int64_t kdim,
                   int64_t vdim, int backward, double *doubles);

/* The score of query i and key j of head (b, h) once the masks apply: s (the scaled score)
 * plus the float mask, or -INFINITY where a mask excludes the key. */
double ex_mask_score(const ex_run *r, int64_t b, int64_t h, int64_t i, int64_t j, double s);
/* 1 when the run has any mask at all. */
int ex_has_mask(const ex_run *r);

/* Steps 2 - 10 from r->x, xk, xv and the parameters. */
void ex_forward(ex_run *r);
/* Steps 12 - 18 from r->dy and the forward. */
void ex_backward(ex_run *r);

/* The FlashAttention-2 forward of head (b, h): query blocks of br rows, key tiles of bc keys,
 * an online softmax with a running max m and sum l per row. A visit of one (block, tile): */
typedef struct {
    int64_t r0, br, c0, bc; /* rows r0 .. r0 + br - 1, keys c0 .. c0 + bc - 1 */
    int skipped;            /* every key of the tile is masked for every row: not computed */
    const double *s;        /* [br, bc] masked, scaled scores */
    const double *m_old;    /* [br] running max before the tile, and after: m_new */
    const double *m_new;
    const double *alpha; /* [br] exp(m_old - m_new): what the earlier sums are rescaled by */
    const double *l;     /* [br] running sum after the tile */
    const double *acc;   /* [br, D] running, unnormalized output after the tile */
    int last;            /* the block's last tile: o = acc / l follows */
} ex_tile;
typedef void (*ex_tile_fn)(void *arg, const ex_tile *t);
/* Runs it for the query rows 0 .. rows - 1 into o [rows, D] (row stride ld) and lse [rows]
 * (either may be NULL), calling visit (may be NULL) after each tile. 0, or -1 out of memory. */
int ex_tiles(const ex_run *r, int64_t b, int64_t h, int64_t rows, int64_t br, int64_t bc, double *o,
             int64_t ld, double *lse, ex_tile_fn visit, void *arg);

/* The first step of the walkthrough (forward, then the backward when r has it) with a value
 * beyond float32's range (|v| > FLT_MAX: float32 would hold infinity there), in step order, and
 * that value in *value; NULL when every value fits (a masked score's -infinity is no
 * overflow). */
const char *ex_overflow(const ex_run *r, double *value);

/* ---------------------------------------------------------------------------------------------
 * Comparing the fused kernel with the walkthrough
 * ------------------------------------------------------------------------------------------- */
typedef struct {
    double max_diff;  /* the largest |got - want| (infinity for a non-finite got) */
    double max_bound; /* the largest bound e */
    int64_t count;    /* elements compared */
    int failed;       /* some |got - want| > e (or not finite) */
    /* the first failure: where, the two values and the bound */
    char where[96];
    double got, want, bound;
} ex_cmp;

/* Compares got (float32, m.rows x m.cols, row stride ld) with m element by element into c
 * (accumulating over calls). name and rows_per_batch say where a failure is: "y[b, i, j]"
 * with b = row / rows_per_batch when rows_per_batch > 0, else "name[i, j]". */
void ex_compare(ex_cmp *c, const float *got, int64_t ld, ex_mat m, const char *name,
                int64_t rows_per_batch);

/* ---------------------------------------------------------------------------------------------
 * Where the walkthrough is written (explain_out.c)
 * ------------------------------------------------------------------------------------------- */
typedef enum {
    EX_TERM,
    EX_HTML
} ex_format;

typedef struct {
    ex_format fmt;
    mha_write_fn write;
    void *user;
    int failed;            /* a write failed: later ones are dropped */
    mha_ctx *ctx;          /* for mha_viz_term's messages */
    int color;             /* terminal: 24-bit colour heatmaps */
    int width;             /* terminal columns (40 ..) */
    int only;              /* --step N: write only section N (0: every section) */
    int skip;              /* inside a section left out by only */
    int open;              /* HTML: a <section> is open */
    mha_status viz_status; /* the first failure of a heatmap (or of fail_msg's) */
    const char *fail_msg;  /* a failure of the writer's own (not the library's): its message */
} ex_out;

/* Kinds of text in a step. */
typedef enum {
    EX_SHAPE,   /* "shape    [H, L, S] = [2, 6, 6]" */
    EX_FORMULA, /* "formula  ..." (several lines allowed) */
    EX_WHY,     /* "why      ..." one sentence, wrapped */
    EX_NOTE,    /* a remark, e.g. what part of a long input is shown */
    EX_CHECK    /* a check's result line, as it stands */
} ex_text_kind;

/* A matrix as a table: values v[i * ld + j] (e.g. a row of a window), labels optional (NULL:
 * 0, 1, ...). At most max_rows x max_cols are shown (0: 8), and a note says so. */
typedef enum {
    EX_SIGNED, /* coloured from the smallest to the largest value shown */
    EX_PROB,   /* coloured on [0, 1] */
    EX_PLAIN   /* no colours (mixed quantities, e.g. a tile's trace) */
} ex_scale;
typedef struct {
    const char *title;
    const double *v;
    int64_t rows, cols, ld;
    const char *const *rlab, *const *clab;
    ex_scale scale;
    int64_t max_rows, max_cols;
} ex_table;

/* The page: its beginning (title and a line that says what is shown) and end. */
void ex_doc_begin(ex_out *o, const char *title, const char *subtitle);
void ex_doc_end(ex_out *o);
/* A new section (the previous one ends): number > 0 a numbered step (left out unless
 * o->only is 0 or number), 0 a section always written. id is its HTML id. */
void ex_section(ex_out *o, int number, const char *id, const char *title);
void ex_text(ex_out *o, ex_text_kind kind, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
void ex_table_write(ex_out *o, const ex_table *t);
/* A row or column label into buf: labels[i] cut to max code points (at a character's start:
 * the text stays UTF-8), control bytes as '?'; without labels, i. */
void ex_label(char *buf, size_t cap, const char *const *labels, int64_t i, size_t max);
/* Attention weights w [H, L, S] as heatmaps (terminal: mha_viz_term, every head side by side;
 * HTML: nothing more, its tables are coloured). Labels as in mha_viz_opts (cross: its
 * key_positions, the keys never labelled with the query tokens). */
void ex_heatmap(ex_out *o, const float *w, int64_t H, int64_t L, int64_t S, const char *const *qtok,
                const char *const *ktok, int cross);

/* ---------------------------------------------------------------------------------------------
 * The steps (explain_steps.c)
 * ------------------------------------------------------------------------------------------- */
#define EX_FORWARD_STEPS 10 /* 1 input .. 10 output projection */
#define EX_LAST_STEP 18     /* 11 .. 18: the backward */
#define EX_WINDOW 8         /* rows and columns of a table shown */
#define EX_HEADS_SHOWN 2    /* heads whose matrices are shown */

/* What is shown of a run and how it is labelled. */
typedef struct {
    const char *const *qtok, *const *ktok; /* [L], [S] or NULL */
    const char *input_note;                /* how the input was made (step 1), or NULL */
    const char *dy_note;                   /* where dy came from (step 11) */
    int scale_given;                       /* --scale */
    int64_t tile_rows, tile_keys;          /* --tiles: br, bc */
} ex_show;

/* Steps first .. last (1 .. EX_FORWARD_STEPS the forward, then the backward's). */
void ex_steps(ex_out *o, const ex_run *r, const ex_show *sh, int first, int last);
/* The tiles section: head 0 of batch 0 tile by tile, then what every head's tiles gave:
 * tiles_diff, the largest |O_tiles - O_steps| over every head (double against double), and
 * core, the library's attention core (mha_attn_forward) on the same q, k, v against step 8. */
void ex_steps_tiles(ex_out *o, const ex_run *r, const ex_show *sh, double tiles_diff,
                    const ex_cmp *core);

#endif
