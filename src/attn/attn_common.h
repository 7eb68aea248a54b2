/* attn_common.h - what the attention core's forward and backward share: argument validation,
 * the mask semantics of one (batch, head, row), and the dropout mask generator.
 *
 * Internal (never installed). The module (src/attn/module.c) and the tests use the dropout
 * functions below to reproduce exactly the mask mha_attn_forward applies.
 *
 * SIZES
 *   B, H, L, S >= 0 are accepted; B*H*L == 0 is a no-op (but the backward's dk, dv, which no
 *   query row reads then, are set to 0); S == 0 makes every row fully masked (out 0, lse
 *   -INFINITY, weights empty). H = 0 goes with any Hkv (0 is a multiple of every Hkv, 0
 *   included; kv_group is then 1); H > 0 needs 1 <= Hkv dividing H. D (q/k head dim) must be
 *   >= 1; Dv >= 0.
 *
 * DROPOUT
 *   The keep decision for element (bh = b*H + h, i, j) is a pure function of
 *   (p->seed, p->offset, bh, i, j) and p->dropout_p:
 *     w = Philox4x32-10(key   = seed ^ ((offset >> 32) * 0x9E3779B97F4A7C15),
 *                       counter = (j / 4, i, bh, offset & 0xffffffff))[j % 4]
 *     keep  iff  w >= ceil(dropout_p * 2^32)
 *   (counter words are the low 32 bits of j / 4, i, bh). Kept weights are scaled by
 *   1 / (1 - dropout_p), dropped ones are 0, as torch.nn.functional.dropout. */
#ifndef MHA_ATTN_COMMON_H
#define MHA_ATTN_COMMON_H

#include "core/internal.h"
#include "kernels/kernels.h"

/* A validated problem: sizes, resolved scale and dropout, and the masks (never NULL). */
typedef struct {
    int64_t B, H, L, S, D, Dv;
    int64_t Hkv, kv_group; /* key/value heads (k.shape[1]); query heads per key/value head */
    float scale;           /* p->scale, or 1/sqrt(D) */
    float dropout_p;       /* 0: no dropout */
    float keep_scale;      /* 1 / (1 - dropout_p) */
    uint64_t drop_thr;     /* keep iff philox word >= drop_thr */
    uint64_t seed, offset;
    mha_mask mask; /* a copy; mha_mask_default() when the caller passed NULL */
    float softcap; /* > 0: s -> softcap * tanh(s / softcap); 0: off */
    /* The key range of row i: j <= i + hi_shift (causality and the window's right bound;
     * MHA__ATTN_NO_DIAG: unbounded) and j >= i + lo_shift (the window's left bound;
     * -MHA__ATTN_NO_DIAG: unbounded). */
    int64_t hi_shift, lo_shift;
    int64_t bh0; /* the dropout counter's head index is bh0 + b*H + h (0; varlen: per sequence) */
    int64_t row0, col0; /* ... its row and key are row0 + i, col0 + j (0; src/mpi: the block's
                           global positions) */
    mha_dtype dt;       /* of q, k, v and the outputs that match them: F32, BF16 or F16 */
} mha__attn_problem;

/* Validates the fields of a mask (NULL: no mask) that need no tensor: causal, attn_batched,
 * and key_lengths[b] in [0, S] for b < B. fn names the public function in messages. */
mha_status mha__attn_check_mask(mha_ctx *ctx, const char *fn, const mha_mask *m, int64_t B,
                                int64_t S);

/* Validates p (not NULL): dropout_p in [0, 1], a finite scale, a finite softcap >= 0. */
mha_status mha__attn_check_params(mha_ctx *ctx, const char *fn, const mha_attn_params *p);

/* Validates the ALiBi slopes of a mask (NULL mask or slopes: none): alibi_batched 0 or 1, every
 * slope of [H] or [B, H] finite. */
mha_status mha__attn_check_alibi(mha_ctx *ctx, const char *fn, const mha_mask *m, int64_t B,
                                 int64_t H);

/* Validates p (NULL: defaults), q, k, v and mask (NULL: no mask), and fills *pr.
 * fn names the public function in messages. q may be F32, BF16 or F16 (pr->dt); k and v must
 * have q's dtype. */
mha_status mha__attn_check_inputs(mha_ctx *ctx, const char *fn, const mha_attn_params *p,
                                  const mha_tensor *q, const mha_tensor *k, const mha_tensor *v,
                                  const mha_mask *mask, mha__attn_problem *pr);

/* A tensor argument and its name in messages. */
typedef struct {
    const char *name;
    const mha_tensor *t; /* NULL: not passed (an optional output) */
} mha__attn_arg;

/* n int32 values (cu_seqlens, cache_seqlens, block_table) as a view for
 * mha__attn_check_aliases, which compares bytes only (a float32 view of the same size);
 * NULL for a NULL p, so that the check skips it. */
static inline const mha_tensor *mha__attn_int_view(const int32_t *p, int64_t n, mha_tensor *t) {
    if (!p) return NULL;
    *t = mha_tensor_strided((float *)(uintptr_t)p, 1, &n, NULL);
    return t;
}

/* A packed batch's prefix sums cu, int32 [batch + 1]: 0 = cu[0] <= cu[1] <= ... <= cu[batch] =
 * total (the token rows of tensor t); errors name cu[s] and t (FlashAttention's varlen). */
mha_status mha__attn_check_cu(mha_ctx *ctx, const char *fn, const char *name, const int32_t *cu,
                              int64_t batch, int64_t total, const char *t);
/* Outputs are written while inputs are still being read (and tile by tile), so an output
 * that shares memory with an input or another output gives silently wrong results. Returns
 * MHA_ERR_INVALID_ARG naming the first such pair ("fn: out overlaps v (...)"), checked with
 * mha__tensors_overlap: interleaved views of one packed buffer do not overlap. Inputs may
 * share memory with each other. */
mha_status mha__attn_check_aliases(mha_ctx *ctx, const char *fn, const mha__attn_arg *outs,
                                   int nout, const mha__attn_arg *ins, int nin);

/* Pointer to row i of head (b, h) of a [B, H, R, X] view. */
static inline float *mha__attn_row(const mha_tensor *t, int64_t b, int64_t h, int64_t i) {
    return t->data + b * t->stride[0] + h * t->stride[1] + i * t->stride[2];
}

/* Address of row i of head (b, h) of a [B, H, R, X] view of any dtype. */
static inline void *mha__attn_row_at(const mha_tensor *t, int64_t b, int64_t h, int64_t i) {
    return (char *)t->ptr + (b * t->stride[0] + h * t->stride[1] + i * t->stride[2]) *
                                (int64_t)mha__tensor_elsize(t);
}

/* Pointer to row i of the key/value head that query head h of batch b reads in a
 * [B, Hkv, S, X] view: head h / kv_group (grouped-query attention; 1: head h itself). */
static inline float *mha__attn_kv_row(const mha__attn_problem *pr, const mha_tensor *t, int64_t b,
                                      int64_t h, int64_t i) {
    return mha__attn_row(t, b, h / pr->kv_group, i);
}

/* Every element of a validated [B, X, R, Y] view of any dtype = 0 (all-zero bits: +0). */
void mha__attn_zero_view(const mha_tensor *t);

/* Rows [r0, r1) of head (b, h) of a [B, H, R, x] view added to a stream of lines to fetch
 * while computing (kernels.h: mha__attn_pf; one span, or none when the stream is full or
 * the rows empty; rows one after another become one row). */
void mha__attn_pf_add(mha__attn_pf *pf, const mha_tensor *t, int64_t b, int64_t h, int64_t r0,
                      int64_t r1, int64_t x);

/* The lines of a stream not yet asked for, asked for now. */
void mha__attn_pf_flush(mha__attn_pf *pf);

/* Whether the threads of a call should fetch the next head's rows while they compute one (a
 * task then a whole head, the next one predicted as this one's + nt, which it is when the
 * tasks take the same time): heads enough for every thread to the end (B*H >= 16 nt: a task's
 * length bounds the tail), or as many for each thread (B*H a multiple of nt, >= 4 nt: equal
 * heads end together; B = 1, H = 8, N = 256 on 2 threads +2%, where 9 heads lost 1-3.5%),
 * and a head's rows (head_bytes, of every tensor it reads or writes) within 512 KiB, so that
 * the next head's stay in a core's L2 beside the current one's. */
static inline int mha__attn_prefetch_heads(const mha__attn_problem *pr, int nt, double head_bytes) {
    const int64_t bh = pr->B * pr->H, n = nt;
    return (bh >= 16 * n || (bh >= 4 * n && bh % n == 0)) && head_bytes <= 512 * 1024;
}

/* Y[rows, n] (ld n) = scale * X[rows, n] (ld ldx): a query tile scaled BEFORE its product with
 * the keys, as PyTorch's nn.MultiheadAttention does (q * scale, then bmm): the scores stay
 * finite whenever |q.k| * scale does, even where |q.k| itself exceeds FLT_MAX. The forward,
 * its weights and the backward all compute the scores as (scale q) k^T from this tile. The rows
 * by the table's scale_f32 (this file's code is compiled for no particular ISA). */
static inline void mha__attn_scale_tile(const mha_kernels *k, int64_t rows, int64_t n, float scale,
                                        const float *X, int64_t ldx, float *Y) {
    if (ldx == n) { /* rows one after another: one call */
        k->scale_f32(rows * n, scale, X, Y);
        return;
    }
    for (int64_t r = 0; r < rows; r++) k->scale_f32(n, scale, X + r * ldx, Y + r * n);
}

/* Keys j >= mha__attn_row_end(pr, b, i) are excluded by causality or key_lengths for row i of
 * batch b (the result is in [0, S]). */
static inline int64_t mha__attn_row_end(const mha__attn_problem *pr, int64_t b, int64_t i) {
    int64_t end = pr->S;
    if (pr->mask.key_lengths && pr->mask.key_lengths[b] < end) end = pr->mask.key_lengths[b];
    if (pr->hi_shift != MHA__ATTN_NO_DIAG) {
        int64_t c = i + pr->hi_shift + 1;
        if (c < 0) c = 0;
        if (c < end) end = c;
    }
    return end;
}

/* Keys j < mha__attn_row_start(pr, i) are excluded by the window's left bound for row i (the
 * result is in [0, S]; non-decreasing in i). */
static inline int64_t mha__attn_row_start(const mha__attn_problem *pr, int64_t i) {
    if (pr->lo_shift == -MHA__ATTN_NO_DIAG) return 0;
    int64_t s = i + pr->lo_shift;
    return s < 0 ? 0 : s > pr->S ? pr->S : s;
}

/* The ALiBi slope of head (b, h) (0: no ALiBi). */
static inline float mha__attn_slope(const mha__attn_problem *pr, int64_t b, int64_t h) {
    if (!pr->mask.alibi_slopes) return 0;
    return pr->mask.alibi_slopes[(pr->mask.alibi_batched ? b * pr->H : 0) + h];
}

/* Element masks of head bh = b*H + h: key_padding row [S] (or NULL), attn_bool / attn_float
 * rows [S] for query row i (or NULL). */
static inline const uint8_t *mha__attn_pad_row(const mha__attn_problem *pr, int64_t b) {
    return pr->mask.key_padding ? pr->mask.key_padding + b * pr->S : NULL;
}
static inline int64_t mha__attn_mask_offset(const mha__attn_problem *pr, int64_t bh, int64_t i) {
    return ((pr->mask.attn_batched ? bh : 0) * pr->L + i) * pr->S;
}
static inline const uint8_t *mha__attn_bool_row(const mha__attn_problem *pr, int64_t bh,
                                                int64_t i) {
    return pr->mask.attn_bool ? pr->mask.attn_bool + mha__attn_mask_offset(pr, bh, i) : NULL;
}
static inline const float *mha__attn_float_row(const mha__attn_problem *pr, int64_t bh, int64_t i) {
    return pr->mask.attn_float ? pr->mask.attn_float + mha__attn_mask_offset(pr, bh, i) : NULL;
}

/* The masks of the tile (query rows from i0, keys from j0) of head bh = b*H + h, in the
 * tile-local form the kernels take (kernels.h). */
static inline void mha__attn_tile_mask_make(const mha__attn_problem *pr, int64_t b, int64_t bh,
                                            int64_t i0, int64_t j0, mha__attn_tile_mask *mk) {
    mk->col_end = (pr->mask.key_lengths ? pr->mask.key_lengths[b] : pr->S) - j0;
    mk->diag = pr->hi_shift != MHA__ATTN_NO_DIAG ? i0 + pr->hi_shift - j0 : MHA__ATTN_NO_DIAG;
    mk->has_lo = pr->lo_shift != -MHA__ATTN_NO_DIAG;
    mk->lo = mk->has_lo ? i0 + pr->lo_shift - j0 : 0;
    mk->softcap = pr->softcap;
    mk->slope = mha__attn_slope(pr, b, bh % pr->H);
    mk->adiag = i0 + pr->S - pr->L - j0;
    mk->pad = pr->mask.key_padding ? pr->mask.key_padding + b * pr->S + j0 : NULL;
    mk->bmask = pr->mask.attn_bool ? mha__attn_bool_row(pr, bh, i0) + j0 : NULL;
    mk->fmask = pr->mask.attn_float ? mha__attn_float_row(pr, bh, i0) + j0 : NULL;
    mk->ld_mask = pr->S;
    mk->pf = NULL;
}

/* 1 when causality, the window, key_lengths or key_padding exclude every key of [j0, j1) for
 * every query row of [i0, i1) of batch b: the tile contributes nothing and is skipped. */
static inline int mha__attn_tile_skip(const mha__attn_problem *pr, int64_t b, int64_t i0,
                                      int64_t i1, int64_t j0, int64_t j1) {
    /* the row end and start are non-decreasing in i: the last row allows the latest keys, the
     * first row the earliest */
    if (mha__attn_row_end(pr, b, i1 - 1) <= j0) return 1;
    if (mha__attn_row_start(pr, i0) >= j1) return 1;
    const uint8_t *pad = mha__attn_pad_row(pr, b);
    if (!pad) return 0;
    for (int64_t j = j0; j < j1; j++)
        if (!pad[j]) return 0;
    return 1;
}

/* Dropout (see the DROPOUT block above). p == NULL or p->dropout_p == 0: always kept. */
int mha__dropout_keep(const mha_attn_params *p, int64_t bh, int64_t i, int64_t j);
/* The same scheme in the kernel table's form (kernels.h: attn_dropout) for head bh:
 * kern->attn_dropout(br, bc, &d, i0, j0, keep, ldk) gives keep[r*ldk + c] =
 * mha__dropout_keep(p, bh, i0 + r, j0 + c) for the problem's p (dropout_p > 0). */
mha__attn_dropout mha__attn_dropout_make(const mha__attn_problem *pr, int64_t bh);

/* Where a call's problem sits in a larger one, for the dropout generator: element (b, h, i, j)
 * draws the keep decision of (bh0 + b*H + h, row0 + i, col0 + j). The public calls: {0, 0, 0}. */
typedef struct {
    int64_t bh0, row0, col0;
} mha__attn_origin;

/* mha_attn_forward and mha_attn_backward for a part of a larger problem: as the public calls,
 * with messages naming fn, and the dropout mask of the larger problem at the origin at (so that
 * sequence s of a packed batch (varlen), called with B = 1 and at.bh0 = s*H, draws the mask the
 * dense call would draw for batch s; and a block of query rows and keys of a sequence split
 * across processes (src/mpi), with row0 and col0 their global positions, the mask of the whole
 * sequence). */
mha_status mha__attn_forward_seq(mha_ctx *ctx, const char *fn, const mha_attn_params *p,
                                 const mha_tensor *q, const mha_tensor *k, const mha_tensor *v,
                                 const mha_mask *mask, mha_tensor *out, mha_tensor *lse,
                                 mha__attn_origin at);
mha_status mha__attn_backward_seq(mha_ctx *ctx, const char *fn, const mha_attn_params *p,
                                  const mha_tensor *q, const mha_tensor *k, const mha_tensor *v,
                                  const mha_mask *mask, const mha_tensor *out,
                                  const mha_tensor *lse, const mha_tensor *dout, mha_tensor *dq,
                                  mha_tensor *dk, mha_tensor *dv, mha__attn_origin at);

/* mha_attn_forward with messages naming fn (the module's calls), its per-head weights
 * (weights, or NULL) or the weights averaged over heads, wavg [B, L, S] (overwritten; or NULL):
 * ((w_0 + w_1) + ...) / H per element, bitwise what averaging the per-head weights gives,
 * without their [B, H, L, S] buffer (the module's need_weights). Not both. */
mha_status mha__attn_forward_named(mha_ctx *ctx, const char *fn, const mha_attn_params *p,
                                   const mha_tensor *q, const mha_tensor *k, const mha_tensor *v,
                                   const mha_mask *mask, mha_tensor *out, mha_tensor *lse,
                                   mha_tensor *weights, mha_tensor *wavg);

#endif
