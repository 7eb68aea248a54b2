/* attn_varlen.c - mha_attn_varlen_forward / _backward: packed variable-length batches
 * (FlashAttention's varlen layout), on the dense core.
 *
 * Sequence s of a packed [T, H, X] tensor is the [1, H, n_s, X] view starting at token row
 * cu[s] (head stride as dimension 1, token stride as dimension 2: no copy, no padding). Each
 * sequence runs through the dense core's per-sequence entry points (mha__attn_forward_seq /
 * _backward_seq) with its own lengths L_s, S_s, so causality, the window and ALiBi align to it
 * (bottom-right: S_s - L_s), with the dropout head index bh0 = s * H, so that it draws the mask
 * batch entry s of a dense call draws, and with the ALiBi slopes of sequence s when they are
 * batched. Long sequences run one after another, each on every thread, short ones side by side
 * (run_seqs).
 *
 * Everything is validated first (varlen_check and the outputs' checks): the packed shapes,
 * every cu_seqlens entry, p and the mask (through the dense core's check on the whole packed
 * tensors as one sequence), aliasing of the packed tensors. A sequence's views are parts of
 * the packed ones, so the per-sequence calls then cannot fail on their arguments: on an
 * argument error nothing has been written. */
#include "attn_common.h"

#include <string.h>

/* A validated call: the packed tensors (NULL: not passed) and the sequence structure. */
typedef struct {
    const mha_tensor *q, *k, *v, *out, *lse, *dout, *dq, *dk, *dv;
    const int32_t *cq, *ck; /* [batch + 1] prefix sums */
    int64_t batch, H;
    mha_mask mask; /* the caller's (or the default), slopes as given */
} varlen_call;

/* Sequence s of a call: its rows, and its [1, H, L, X] ([1, H, L] for lse) views. */
typedef struct {
    int64_t i0, L, j0, S; /* query rows i0 .. i0 + L - 1, keys j0 .. j0 + S - 1 */
    mha_tensor q, k, v, out, lse, dout, dq, dk, dv;
    mha_mask mask;
} varlen_seq;

/* The [1, H, n, X] view of token rows r0 .. r0 + n - 1 of a packed [T, H, X] tensor (t NULL:
 * an empty view, never used). */
static mha_tensor seq_view(const mha_tensor *t, int64_t r0, int64_t n) {
    if (!t) return mha_tensor_make(NULL, 0, NULL);
    int64_t shape[4] = {1, t->shape[1], n, t->shape[2]};
    int64_t stride[4] = {0, t->stride[1], t->stride[0], t->stride[2]};
    const int64_t off = r0 * t->stride[0] * (int64_t)mha__tensor_elsize(t);
    return mha_tensor_typed(t->ptr ? (char *)t->ptr + off : NULL, t->dtype, 4, shape, stride);
}

/* The [1, H, n] view of columns r0 .. r0 + n - 1 of an lse [H, T]. */
static mha_tensor seq_lse(const mha_tensor *t, int64_t r0, int64_t n) {
    if (!t) return mha_tensor_make(NULL, 0, NULL);
    int64_t shape[3] = {1, t->shape[0], n}, stride[3] = {0, t->stride[0], t->stride[1]};
    return mha_tensor_strided(t->data ? t->data + r0 * t->stride[1] : NULL, 3, shape, stride);
}

static void seq_make(const varlen_call *c, int64_t s, varlen_seq *x) {
    x->i0 = c->cq[s], x->L = c->cq[s + 1] - x->i0;
    x->j0 = c->ck[s], x->S = c->ck[s + 1] - x->j0;
    x->q = seq_view(c->q, x->i0, x->L), x->out = seq_view(c->out, x->i0, x->L);
    x->dout = seq_view(c->dout, x->i0, x->L), x->dq = seq_view(c->dq, x->i0, x->L);
    x->lse = seq_lse(c->lse, x->i0, x->L);
    x->k = seq_view(c->k, x->j0, x->S), x->v = seq_view(c->v, x->j0, x->S);
    x->dk = seq_view(c->dk, x->j0, x->S), x->dv = seq_view(c->dv, x->j0, x->S);
    /* the caller's mask, with sequence s's row of batched ALiBi slopes */
    x->mask = c->mask;
    if (x->mask.alibi_slopes && x->mask.alibi_batched)
        x->mask.alibi_slopes += s * c->H, x->mask.alibi_batched = 0;
}

/* Masks that need a dense [B, L, S] layout have no meaning for a packed batch. */
static mha_status check_dense_masks(mha_ctx *ctx, const char *fn, const mha_mask *m) {
    if (!m) return MHA_OK;
    const char *name = m->key_padding   ? "key_padding"
                       : m->key_lengths ? "key_lengths"
                       : m->attn_bool   ? "attn_bool"
                       : m->attn_float  ? "attn_float"
                                        : NULL;
    if (!name) return MHA_OK;
    return mha__err(ctx, MHA_ERR_INVALID_ARG,
                    "%s: mask->%s: got a mask, expected NULL (it needs a dense [B, L, S] layout, "
                    "which a packed batch has not: cu_seqlens_k gives each sequence its keys)",
                    fn, name);
}

/* Validates what the forward and the backward share, c->q .. c->lse set (lse NULL: the
 * forward's optional one not passed): the tensors' shapes, batch, the cu_seqlens, the mask
 * and p. Fills the rest of *c. */
static mha_status varlen_check(mha_ctx *ctx, const char *fn, const mha_attn_params *p,
                               const int32_t *cq, const int32_t *ck, int64_t batch,
                               const mha_mask *mask, varlen_call *c) {
    mha_status st;
    const mha_tensor *q = c->q, *k = c->k, *v = c->v;
    const mha_dtype dt = q ? q->dtype : MHA_DTYPE_F32; /* float32, bf16 or f16: the core's */
    if (dt != MHA_DTYPE_F32 && dt != MHA_DTYPE_BF16 && dt != MHA_DTYPE_F16)
        return mha__err(ctx, MHA_ERR_UNSUPPORTED,
                        "%s: q.dtype: got %s, expected float32, bfloat16 or float16", fn,
                        mha_dtype_name(dt));
    if ((st = mha__check_tensor_as(ctx, fn, "q", q, dt, 3, NULL, "[Tq, H, D]"))) return st;
    const int64_t Tq = q->shape[0], H = q->shape[1], D = q->shape[2];
    if (D < 1)
        return mha__err(ctx, MHA_ERR_SHAPE, "%s: q.shape[2]: got %lld, expected >= 1 (head dim)",
                        fn, (long long)D);
    int64_t wk[3] = {-1, -1, D};
    if ((st = mha__check_tensor_as(ctx, fn, "k", k, dt, 3, wk, "[Tk, Hkv, D], q head dim")))
        return st;
    int64_t wv[3] = {k->shape[0], -1, -1};
    if ((st = mha__check_tensor_as(ctx, fn, "v", v, dt, 3, wv, "[Tk, Hkv, Dv], k tokens")))
        return st;
    if (batch < 0)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: batch: got %lld, expected >= 0", fn,
                        (long long)batch);
    if ((st = mha__attn_check_cu(ctx, fn, "cu_seqlens_q", cq, batch, Tq, "q"))) return st;
    if ((st = mha__attn_check_cu(ctx, fn, "cu_seqlens_k", ck, batch, k->shape[0], "k"))) return st;
    if ((st = check_dense_masks(ctx, fn, mask))) return st;
    if ((st = mha__attn_check_alibi(ctx, fn, mask, batch, H))) return st;
    c->cq = cq, c->ck = ck, c->batch = batch, c->H = H;
    c->mask = mask ? *mask : mha_mask_default();
    /* The heads (k's divide q's, v's are k's), p and the rest of the mask: the dense check of
     * the whole packed tensors as one sequence, whose [1, H, T, X] views number the heads as
     * dimension 1 too; its other shape messages cannot occur (checked above). */
    const mha_tensor *out = c->out, *lse = c->lse;
    varlen_call whole = *c;
    whole.out = whole.lse = whole.dout = whole.dq = whole.dk = whole.dv = NULL;
    int32_t all_q[2] = {0, (int32_t)Tq}, all_k[2] = {0, (int32_t)k->shape[0]};
    whole.cq = all_q, whole.ck = all_k;
    whole.mask.alibi_slopes = NULL; /* checked above, as [batch, H] */
    varlen_seq x;
    seq_make(&whole, 0, &x);
    mha__attn_problem pr;
    if ((st = mha__attn_check_inputs(ctx, fn, p, &x.q, &x.k, &x.v, &x.mask, &pr))) return st;
    int64_t wo[3] = {Tq, H, v->shape[2]}, wl[2] = {H, Tq};
    if ((st = mha__check_tensor_as(ctx, fn, "out", out, dt, 3, wo, "[Tq, H, Dv]"))) return st;
    if (lse && (st = mha__check_tensor(ctx, fn, "lse", lse, 2, wl, "[H, Tq]"))) return st;
    return MHA_OK;
}

/* One sequence's call: the dense core's forward or backward on its views. */
typedef mha_status (*seq_call)(mha_ctx *ctx, const char *fn, const mha_attn_params *p,
                               const varlen_call *c, varlen_seq *x, int64_t s);

static mha_status seq_forward(mha_ctx *ctx, const char *fn, const mha_attn_params *p,
                              const varlen_call *c, varlen_seq *x, int64_t s) {
    return mha__attn_forward_seq(ctx, fn, p, &x->q, &x->k, &x->v, &x->mask, &x->out,
                                 c->lse ? &x->lse : NULL, (mha__attn_origin){s * c->H, 0, 0});
}

static mha_status seq_backward(mha_ctx *ctx, const char *fn, const mha_attn_params *p,
                               const varlen_call *c, varlen_seq *x, int64_t s) {
    return mha__attn_backward_seq(ctx, fn, p, &x->q, &x->k, &x->v, &x->mask, &x->out, &x->lse,
                                  &x->dout, &x->dq, &x->dk, &x->dv,
                                  (mha__attn_origin){s * c->H, 0, 0});
}

/* Small sequences (below 2^24 multiply-adds: the dense core would not keep the threads busy on
 * one) run side by side, one thread each; the others one after another, each on every thread.
 * The dense core's results do not depend on its thread count: the same bits either way. */
static int seq_small(const varlen_call *c, const varlen_seq *x) {
    return (double)c->H * (double)x->L * (double)x->S * (double)(c->q->shape[2] + c->v->shape[2]) <
           (double)(1 << 24);
}

/* Every sequence of a validated call through `call` (after validation only an allocation can
 * fail: its message goes to ctx). */
static mha_status run_seqs(mha_ctx *ctx, const char *fn, const mha_attn_params *p,
                           const varlen_call *c, seq_call call) {
    const int nt = mha__ctx_threads(ctx);
    mha_status st = MHA_OK;
    int64_t nsmall = 0;
    for (int64_t s = 0; s < c->batch; s++) {
        varlen_seq x;
        seq_make(c, s, &x);
        if (nt > 1 && seq_small(c, &x)) {
            nsmall++;
            continue;
        }
        if ((st = call(ctx, fn, p, c, &x, s))) return st;
    }
    if (nsmall == 0) return MHA_OK;
    mha_ctx one; /* the caller's kernels on one thread */
    memset(&one, 0, sizeof one);
    one.threads = 1, one.isa = mha_ctx_isa(ctx), one.kern = mha__ctx_kernels(ctx);
    char msg[MHA__MSG_CAP] = "";
#pragma omp parallel num_threads(nt)
    {
        mha_ctx mine = one; /* each thread its own message */
#pragma omp for schedule(dynamic, 1)
        for (int64_t s = 0; s < c->batch; s++) {
            varlen_seq x;
            seq_make(c, s, &x);
            if (!seq_small(c, &x)) continue;
            mha_status e = call(&mine, fn, p, c, &x, s);
            if (e) {
#pragma omp critical
                if (!st) st = e, memcpy(msg, mine.msg, sizeof msg);
            }
        }
    }
    return st ? mha__err(ctx, st, "%s", msg) : MHA_OK;
}

mha_status mha_attn_varlen_forward(mha_ctx *ctx, const mha_attn_params *p, const mha_tensor *q,
                                   const mha_tensor *k, const mha_tensor *v,
                                   const int32_t *cu_seqlens_q, const int32_t *cu_seqlens_k,
                                   int64_t batch, const mha_mask *mask, mha_tensor *out,
                                   mha_tensor *lse) {
    static const char fn[] = "mha_attn_varlen_forward";
    mha__clear(ctx);
    varlen_call c = {.q = q, .k = k, .v = v, .out = out, .lse = lse};
    mha_status st = varlen_check(ctx, fn, p, cu_seqlens_q, cu_seqlens_k, batch, mask, &c);
    if (st) return st;
    mha_tensor tcq, tck; /* the prefix sums are read while out is written */
    const mha__attn_arg ins[5] = {
        {"q", q},
        {"k", k},
        {"v", v},
        {"cu_seqlens_q", mha__attn_int_view(cu_seqlens_q, batch + 1, &tcq)},
        {"cu_seqlens_k", mha__attn_int_view(cu_seqlens_k, batch + 1, &tck)}};
    const mha__attn_arg outs[2] = {{"out", out}, {"lse", lse}};
    if ((st = mha__attn_check_aliases(ctx, fn, outs, 2, ins, 5))) return st;
    return run_seqs(ctx, fn, p, &c, seq_forward);
}

mha_status mha_attn_varlen_backward(mha_ctx *ctx, const mha_attn_params *p, const mha_tensor *q,
                                    const mha_tensor *k, const mha_tensor *v,
                                    const int32_t *cu_seqlens_q, const int32_t *cu_seqlens_k,
                                    int64_t batch, const mha_mask *mask, const mha_tensor *out,
                                    const mha_tensor *lse, const mha_tensor *dout, mha_tensor *dq,
                                    mha_tensor *dk, mha_tensor *dv) {
    static const char fn[] = "mha_attn_varlen_backward";
    mha__clear(ctx);
    if (!lse) return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: lse: got NULL, expected a tensor", fn);
    varlen_call c = {.q = q, .k = k, .v = v, .out = out, .lse = lse};
    mha_status st = varlen_check(ctx, fn, p, cu_seqlens_q, cu_seqlens_k, batch, mask, &c);
    if (st) return st;
    const mha_dtype dt = q->dtype;
    if ((st = mha__check_tensor_as(ctx, fn, "dout", dout, dt, 3, out->shape,
                                   "[Tq, H, Dv] as out")) ||
        (st = mha__check_tensor_as(ctx, fn, "dq", dq, dt, 3, q->shape, "[Tq, H, D] as q")) ||
        (st = mha__check_tensor_as(ctx, fn, "dk", dk, dt, 3, k->shape, "[Tk, Hkv, D] as k")) ||
        (st = mha__check_tensor_as(ctx, fn, "dv", dv, dt, 3, v->shape, "[Tk, Hkv, Dv] as v")))
        return st;
    mha_tensor tcq, tck;
    const mha__attn_arg ins[8] = {
        {"q", q},
        {"k", k},
        {"v", v},
        {"out", out},
        {"lse", lse},
        {"dout", dout},
        {"cu_seqlens_q", mha__attn_int_view(cu_seqlens_q, batch + 1, &tcq)},
        {"cu_seqlens_k", mha__attn_int_view(cu_seqlens_k, batch + 1, &tck)}};
    const mha__attn_arg outs[3] = {{"dq", dq}, {"dk", dk}, {"dv", dv}};
    if ((st = mha__attn_check_aliases(ctx, fn, outs, 3, ins, 8))) return st;
    c.dout = dout, c.dq = dq, c.dk = dk, c.dv = dv;
    return run_seqs(ctx, fn, p, &c, seq_backward);
}
