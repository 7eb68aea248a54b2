/* attn_decode.c - mha_attn_kvcache: append new keys and values to a cache, then attend new
 * queries to it (FlashAttention's flash_attn_with_kvcache), positions aligned bottom-right to
 * each sequence's length len_b = cache_seqlens[b] + Lnew.
 *
 * DECODING (a few query rows per key/value head: rows = L * H / Hkv <= 16, or up to
 * MHA__ATTN_DECODE_ROWS with grouped heads: is_decode):
 * flash-decoding (Dao et al., 2023). The keys [0, len_b) of each (b, key/value head) are cut
 * into chunks of DEC_CHUNK keys, a constant (never a function of the thread count):
 *   task (b, group of key/value heads, chunk), in parallel, a thread taking runs of consecutive
 *       chunks (it reads on along the cache's streams): each head's rows (the query heads
 *       h that read it x the L tokens, row r = (h % group) * L + i) scaled by p->scale, then
 *       the table's attn_decode over the chunk's K and V rows read in place from the cache
 *       (each read once for all the rows; the heads interleaved block by block, so that the
 *       [B, S, Hkv, D] layout is read a key at a time): the chunk's partial m[r], l[r],
 *       O[r] = sum exp(s - m) v per head. All the heads of a chunk make one task unless that
 *       leaves fewer than 4 tasks per thread (a head's bits never depend on its group)
 *   merge (b, kv head), in parallel: the chunks of each row combined IN CHUNK ORDER by
 *       log-sum-exp, M = max_c m_c, l = sum_c exp(m_c - M) l_c, O = sum_c exp(m_c - M) O_c,
 *       out = O / l, lse = M + log(l) (l = 0: out 0, lse -inf)
 * Every task's arithmetic and the merge order are fixed by the chunking, so the result is
 * bitwise the same for any thread count; one query token (B = 1, H = 1) still splits over all
 * threads, a run of chunks at a time.
 * PREFILL (more rows): mha_attn_forward's fused tiles on views of each sequence's cache rows
 * [0, len_b), causal aligned bottom-right (MHA_CAUSAL_BOTTOM_RIGHT), window and ALiBi passed
 * through; the same score definition, so the two paths agree up to float rounding.
 *
 * DTYPES: q, the caches, the new rows and out share one dtype: float32, bfloat16 or half (lse
 * is float32). The new rows are appended as they are; the decode kernel reads the cache's
 * elements in their type (converted exactly as they are loaded); the query rows are converted
 * to float32 and scaled once per call; the merge computes each output row in float32 and
 * rounds it once (to nearest even, kernels/cvt.h). The prefill passes the typed views to the
 * dense core (which takes every dtype).
 *
 * The steps: kv_check validates every argument (nothing is written before it succeeds),
 * kv_append copies the new rows into the caches, then dec_plan / dec_chunk / dec_merge or
 * prefill compute. */
#include "decode.h"
#include "attn_common.h"
#include "core/plan.h"
#include "kernels/kernels.h"

#include <math.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define DEC_CHUNK 512 /* keys per decode task: 512 x (D + Dv) floats, 512 KiB at D = Dv = 128 */

/* Per thread (decode): the row of out being merged, in float32 (rounded once into out). */
typedef struct {
    float *orow; /* [Dv] */
} dec_ws;

/* One call: validated arguments, and the decode plan. */
typedef struct {
    const char *fn;
    mha_dtype dt; /* of q, the caches, the new rows and out */
    int64_t B, H, Hkv, group, L, D, Dv, Smax, Lnew;
    float scale, softcap;
    mha_mask mask; /* a copy (mha_mask_default() for NULL) */
    const int32_t *lens;
    const mha_tensor *q, *k_new, *v_new;
    mha_tensor *kc, *vc, *out, *lse;
    /* paged caches (mha_attn_kvcache_paged): kc, vc are pools [P, Hkv, page, D]; key j of
     * sequence b is row j % page of page bt[b * nbt + j / page]. Unpaged: bt NULL, page =
     * Smax (sequence b's cache is kc's batch b) */
    const int32_t *bt;
    int64_t nbt, page, npages;
    /* decode */
    const mha_kernels *kern;
    int64_t rows, nch, psz; /* rows per head, chunks per sequence, floats per partial */
    int64_t hg, nhg;        /* key/value heads per task, and groups of them */
    int64_t run;            /* tasks a thread takes at once: consecutive chunks (dec_run) */
    /* the call's workspace (one allocation, dec_alloc) */
    float *part;  /* [B, nch, Hkv] partials of psz floats: m [rows], l [rows], O [rows, Dv] */
    float *qs;    /* [B, Hkv, rows, D] each key/value head's query rows, float32, times scale */
    uint16_t *qb; /* bf16 calls: [B, Hkv, rows, D] the same rows unscaled, as they are in q */
    float *slope; /* [B, Hkv, rows] their ALiBi slopes */
    void *gather; /* a paged prefill: one sequence's keys and values, contiguous (prefill) */
    void *ws;     /* nt copies of plan: dec_ws */
    int nt;
    mha__plan plan; /* per thread: dec_ws */
} kv_call;

/* Bytes per element of the call's tensors but lse. */
static size_t kv_es(const kv_call *c) { return c->dt == MHA_DTYPE_F32 ? 4 : 2; }

/* Row i of head (b, h) of a [B, H, R, X] view of any dtype. */
static void *kv_row(const mha_tensor *t, int64_t b, int64_t h, int64_t i) {
    return (char *)t->ptr + (b * t->stride[0] + h * t->stride[1] + i * t->stride[2]) *
                                (int64_t)mha__tensor_elsize(t);
}

/* Cache row j of key/value head h of sequence b (its page's row when paged). */
static void *kv_cache_row(const kv_call *c, const mha_tensor *t, int64_t b, int64_t h, int64_t j) {
    if (!c->bt) return kv_row(t, b, h, j);
    return kv_row(t, c->bt[b * c->nbt + j / c->page], h, j % c->page);
}

static int64_t kv_len(const kv_call *c, int64_t b) { return (c->lens ? c->lens[b] : 0) + c->Lnew; }

/* The blocks (pages) that rows [0, n) span: ceil(n / page), without n + page - 1, which
 * overflows for a page of near INT64_MAX rows (a stride-0 view) */
static int64_t kv_blocks(const kv_call *c, int64_t n) { return n > 0 ? (n - 1) / c->page + 1 : 0; }

/* p: scale, softcap finite (softcap >= 0), no dropout. */
static mha_status kv_check_params(mha_ctx *ctx, const char *fn, const mha_attn_params *p) {
    if (p->dropout_p != 0)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: p->dropout_p: got %g, expected 0 (no dropout with a kv cache)", fn,
                        (double)p->dropout_p);
    return mha__attn_check_params(ctx, fn, p);
}

/* The mask: causal, window and ALiBi only (the lengths come from cache_seqlens). */
static mha_status kv_check_mask(mha_ctx *ctx, const char *fn, const mha_mask *m, int64_t B,
                                int64_t H) {
    if (!m) return MHA_OK;
    const char *bad = m->key_padding   ? "key_padding"
                      : m->key_lengths ? "key_lengths"
                      : m->attn_bool   ? "attn_bool"
                      : m->attn_float  ? "attn_float"
                                       : NULL;
    if (bad)
        return mha__err(ctx, MHA_ERR_UNSUPPORTED,
                        "%s: mask->%s: got a mask, expected NULL (with a kv cache only causal, "
                        "window and ALiBi apply; each sequence's keys are the tokens its cache "
                        "holds and the new ones)",
                        fn, bad);
    mha_status st = mha__attn_check_mask(ctx, fn, m, B, 0);
    return st ? st : mha__attn_check_alibi(ctx, fn, m, B, H);
}

/* The pool's pages and the table's row length (paged), or the cache's rows: c->Smax, each
 * sequence's capacity. */
static mha_status kv_check_pages(mha_ctx *ctx, const char *fn, kv_call *c) {
    if (!c->bt) {
        c->page = c->Smax = c->kc->shape[2], c->npages = c->kc->shape[0];
        return MHA_OK;
    }
    c->npages = c->kc->shape[0], c->page = c->kc->shape[2];
    if (c->page < 1)
        return mha__err(ctx, MHA_ERR_SHAPE,
                        "%s: k_pages.shape[2]: got %lld, expected >= 1 (rows per page)", fn,
                        (long long)c->page);
    /* each sequence's rows and the table's entries [B, max_blocks] must be countable */
    const int64_t rows = INT64_MAX / c->page, ents = INT64_MAX / (c->B > 1 ? c->B : 1);
    const int64_t most = rows < ents ? rows : ents;
    if (c->nbt < 0 || c->nbt > most)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: max_blocks: got %lld, expected 0 .. %lld (blocks per sequence in "
                        "block_table)",
                        fn, (long long)c->nbt, (long long)most);
    c->Smax = c->nbt * c->page;
    return MHA_OK;
}

/* q, the caches, the new rows: shapes against each other, and one dtype (q's: float32, bfloat16
 * or half; lse float32). */
static mha_status kv_check_tensors(mha_ctx *ctx, const char *fn, kv_call *c) {
    mha_status st;
    const mha_dtype qt = c->q ? c->q->dtype : MHA_DTYPE_F32;
    const mha_dtype dt = c->dt = qt == MHA_DTYPE_BF16 || qt == MHA_DTYPE_F16 ? qt : MHA_DTYPE_F32;
    if ((st = mha__check_tensor_as(ctx, fn, "q", c->q, dt, 4, NULL, "[B, H, L, D]"))) return st;
    const int64_t B = c->B = c->q->shape[0], H = c->H = c->q->shape[1], D = c->D = c->q->shape[3];
    c->L = c->q->shape[2];
    if (D < 1)
        return mha__err(ctx, MHA_ERR_SHAPE, "%s: q.shape[3]: got %lld, expected >= 1 (head dim)",
                        fn, (long long)D);
    int64_t wk[4] = {B, -1, -1, D}, wp[4] = {-1, -1, -1, D};
    const char *kname = c->bt ? "k_pages" : "k_cache", *vname = c->bt ? "v_pages" : "v_cache";
    if ((st = mha__check_tensor_as(ctx, fn, kname, c->kc, dt, 4, c->bt ? wp : wk,
                                   c->bt ? "[P, Hkv, page, D], D as q's"
                                         : "[B, Hkv, Smax, D], B and D as q's")))
        return st;
    const int64_t Hkv = c->Hkv = c->kc->shape[1];
    if ((st = kv_check_pages(ctx, fn, c))) return st;
    const int64_t Smax = c->Smax;
    if (H > 0 && (Hkv < 1 || H % Hkv != 0)) /* H = 0: empty, any Hkv (mha__attn_check_inputs) */
        return mha__err(ctx, MHA_ERR_SHAPE,
                        "%s: %s.shape[1]: got %lld, expected a divisor of q's %lld heads "
                        "(grouped-query attention: query head h uses key/value head h / (H / Hkv))",
                        fn, kname, (long long)Hkv, (long long)H);
    c->group = H > 0 ? H / Hkv : 1;
    int64_t wv[4] = {B, Hkv, Smax, -1}, wvp[4] = {c->npages, Hkv, c->page, -1};
    if ((st = mha__check_tensor_as(ctx, fn, vname, c->vc, dt, 4, c->bt ? wvp : wv,
                                   c->bt ? "[P, Hkv, page, Dv] as k_pages"
                                         : "[B, Hkv, Smax, Dv] as k_cache")))
        return st;
    const int64_t Dv = c->Dv = c->vc->shape[3];
    c->Lnew = 0;
    if (!c->k_new != !c->v_new)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: %s: got NULL while %s is given, expected both or neither", fn,
                        c->k_new ? "v_new" : "k_new", c->k_new ? "k_new" : "v_new");
    if (c->k_new) {
        if ((st = mha__check_tensor_as(ctx, fn, "k_new", c->k_new, dt, 4, wk, "[B, Hkv, Lnew, D]")))
            return st;
        if (c->k_new->shape[1] != Hkv)
            return mha__err(ctx, MHA_ERR_SHAPE,
                            "%s: k_new.shape[1]: got %lld, expected %lld (%s heads)", fn,
                            (long long)c->k_new->shape[1], (long long)Hkv, kname);
        c->Lnew = c->k_new->shape[2];
        int64_t wn[4] = {B, Hkv, c->Lnew, Dv};
        if ((st = mha__check_tensor_as(ctx, fn, "v_new", c->v_new, dt, 4, wn,
                                       c->bt ? "[B, Hkv, Lnew, Dv] as k_new and v_pages"
                                             : "[B, Hkv, Lnew, Dv] as k_new and v_cache")))
            return st;
    }
    int64_t wo[4] = {B, H, c->L, Dv}, wl[3] = {B, H, c->L};
    if ((st = mha__check_tensor_as(ctx, fn, "out", c->out, dt, 4, wo, "[B, H, L, Dv]"))) return st;
    if (c->lse && (st = mha__check_tensor(ctx, fn, "lse", c->lse, 3, wl, "[B, H, L]"))) return st;
    return MHA_OK;
}

/* Every cache_seqlens[b] >= 0 and its sequence (+ Lnew) within the cache. */
static mha_status kv_check_lens(mha_ctx *ctx, const char *fn, const kv_call *c) {
    if (!c->lens || c->Lnew > c->Smax) { /* the new rows alone overflow (or no lengths) */
        if (c->Lnew > c->Smax)
            return mha__err(ctx, MHA_ERR_SHAPE,
                            "%s: k_new.shape[2]: got %lld, expected at most %lld (cache overflow: "
                            "the cache has %lld rows%s)",
                            fn, (long long)c->Lnew, (long long)c->Smax, (long long)c->Smax,
                            c->bt ? ": max_blocks x page" : "");
        return MHA_OK;
    }
    for (int64_t b = 0; b < c->B; b++) {
        const int64_t n = c->lens[b];
        if (n < 0)
            return mha__err(
                ctx, MHA_ERR_INVALID_ARG,
                "%s: cache_seqlens[%lld]: got %lld, expected >= 0 (tokens in the cache)", fn,
                (long long)b, (long long)n);
        if (n + c->Lnew > c->Smax)
            return mha__err(ctx, MHA_ERR_INVALID_ARG,
                            "%s: cache_seqlens[%lld]: got %lld, expected at most %lld (cache "
                            "overflow: %lld + %lld new tokens exceed the cache's %lld rows%s)",
                            fn, (long long)b, (long long)n, (long long)(c->Smax - c->Lnew),
                            (long long)n, (long long)c->Lnew, (long long)c->Smax,
                            c->bt ? ": max_blocks x page" : "");
    }
    return MHA_OK;
}

/* The other block (b2, i2) than (b, i) that uses page x, if any (1). */
static int kv_page_user(const kv_call *c, int64_t b, int64_t i, int64_t x, int64_t *b2,
                        int64_t *i2) {
    for (int64_t s = 0; s < c->B; s++) {
        const int64_t nb = kv_blocks(c, kv_len(c, s));
        for (int64_t j = 0; j < nb; j++)
            if ((s != b || j != i) && c->bt[s * c->nbt + j] == x) {
                *b2 = s, *i2 = j;
                return 1;
            }
    }
    return 0;
}

/* Paged: every block a sequence uses (its rows [0, cache_seqlens[b] + Lnew)) names a page of the
 * pool, and a page that new rows are written to is used by no other block (no sequence may read
 * rows that another's append changes, nor two blocks write one page). */
static mha_status kv_check_table(mha_ctx *ctx, const char *fn, const kv_call *c) {
    if (!c->bt) return MHA_OK;
    for (int64_t b = 0; b < c->B; b++) {
        const int64_t nb = kv_blocks(c, kv_len(c, b));
        for (int64_t i = 0; i < nb; i++) {
            const int64_t x = c->bt[b * c->nbt + i];
            if (x < 0 || x >= c->npages)
                return mha__err(ctx, MHA_ERR_INVALID_ARG,
                                "%s: block_table[%lld][%lld]: got %lld, expected a page in [0, "
                                "%lld) (k_pages.shape[0]; sequence %lld uses %lld blocks)",
                                fn, (long long)b, (long long)i, (long long)x, (long long)c->npages,
                                (long long)b, (long long)nb);
        }
    }
    if (c->Lnew == 0) return MHA_OK;
    uint8_t *uses = mha__calloc((size_t)c->npages, 1); /* 0, 1, 2: more than one block */
    if (!uses)
        return mha__err(ctx, MHA_ERR_NOMEM, "%s: block_table: out of memory (%lld pages)", fn,
                        (long long)c->npages);
    for (int64_t b = 0; b < c->B; b++)
        for (int64_t i = 0, nb = kv_blocks(c, kv_len(c, b)); i < nb; i++) {
            uint8_t *u = &uses[c->bt[b * c->nbt + i]];
            *u += *u < 2;
        }
    mha_status st = MHA_OK;
    for (int64_t b = 0; b < c->B && !st; b++) {
        const int64_t j0 = c->lens ? c->lens[b] : 0, j1 = j0 + c->Lnew;
        for (int64_t i = j0 / c->page; i < kv_blocks(c, j1) && !st; i++) {
            const int64_t x = c->bt[b * c->nbt + i];
            int64_t b2, i2;
            if (uses[x] > 1 && kv_page_user(c, b, i, x, &b2, &i2))
                st = mha__err(ctx, MHA_ERR_INVALID_ARG,
                              "%s: block_table[%lld][%lld]: got page %lld, which new rows are "
                              "written to, also used by block_table[%lld][%lld], expected a page "
                              "of its own (sequences may share only pages they read)",
                              fn, (long long)b, (long long)i, (long long)x, (long long)b2,
                              (long long)i2);
        }
    }
    mha__free(uses);
    return st;
}

/* A [1, X, R, Y] view of batch b of t, rows [0, R). */
static mha_tensor batch_view(const mha_tensor *t, int64_t b, int64_t R) {
    mha_tensor v = *t;
    v.ptr = (char *)t->ptr + b * t->stride[0] * (int64_t)mha__tensor_elsize(t);
    v.shape[0] = 1;
    if (t->ndim == 4) v.shape[2] = R;
    return v;
}

/* The mask the dense core applies to batch b (prefill): causal bottom-right, the window and the
 * slopes of b. */
static mha_mask prefill_mask(const kv_call *c, int64_t b) {
    mha_mask mk = c->mask;
    if (mk.causal != MHA_CAUSAL_NONE) mk.causal = MHA_CAUSAL_BOTTOM_RIGHT;
    if (mk.alibi_slopes && mk.alibi_batched) mk.alibi_slopes += b * c->H;
    return mk;
}

/* The keys and values the prefill of sequence b attends, rows [0, len_b): views of its cache
 * batch, or, paged, of c->gather ([1, Hkv, len_b, D] keys, then [1, Hkv, len_b, Dv] values,
 * contiguous), where copy != 0 gathers its pages' rows (copy 0: the views only, for checks). */
static void prefill_kv(const kv_call *c, int64_t b, int copy, mha_tensor *kb, mha_tensor *vb) {
    const int64_t len = kv_len(c, b), Hkv = c->Hkv, D = c->D, Dv = c->Dv;
    if (!c->bt) {
        *kb = batch_view(c->kc, b, len), *vb = batch_view(c->vc, b, len);
        return;
    }
    char *g = c->gather ? c->gather : c->kc->ptr;
    const size_t es = kv_es(c);
    const int64_t shk[4] = {1, Hkv, len, D}, sk[4] = {Hkv * len * D, len * D, D, 1};
    const int64_t shv[4] = {1, Hkv, len, Dv}, sv[4] = {Hkv * len * Dv, len * Dv, Dv, 1};
    *kb = mha_tensor_typed(g, c->dt, 4, shk, sk);
    *vb = mha_tensor_typed(g + es * (size_t)(Hkv * len * D), c->dt, 4, shv, sv);
    for (int64_t h = 0; copy && h < Hkv; h++)
        for (int64_t j = 0; j < len; j++) {
            memcpy(kv_row(kb, 0, h, j), kv_cache_row(c, c->kc, b, h, j), es * (size_t)D);
            if (Dv > 0)
                memcpy(kv_row(vb, 0, h, j), kv_cache_row(c, c->vc, b, h, j), es * (size_t)Dv);
        }
}

/* Decoding for up to DEC_ROWS rows per key/value head, and for up to MHA__ATTN_DECODE_ROWS when
 * query heads share them (grouped-query attention: a few tokens of speculative decoding): the
 * decode kernel reads each key and value once per key/value head, where the dense core's tiles
 * read and pack them once per query head. Measured (B=1, D=128, S=32768, float32, 2 threads,
 * dense -> decode, BENCHMARKS.md): H=32 Hkv=4 L=3 (24 rows) 52 -> 13 ms, L=4 52 -> 17, L=8
 * 63 -> 34; H=64 Hkv=8 L=8 120 -> 77 ([B, Hkv, S, D]), 173 -> 70 ([B, S, Hkv, D]). More rows, or
 * more than DEC_ROWS of heads of their own, prefill on the dense core's tiles, whose register
 * blocks compute faster once the keys' cost is shared by enough rows (H = Hkv = 8, L = 40,
 * S = 2048: 2.35 ms dense, 2.69 decode). */
#define DEC_ROWS 16
static int is_decode(const kv_call *c) {
    const int64_t rows = c->L * c->group;
    return rows <= DEC_ROWS || (c->group > 1 && rows <= MHA__ATTN_DECODE_ROWS);
}

/* Validates everything into c (the caches are written only after this succeeds). */
static mha_status kv_check(mha_ctx *ctx, const mha_attn_params *p, kv_call *c) {
    const char *fn = c->fn;
    const mha_attn_params dp = mha_attn_params_default();
    if (!p) p = &dp;
    mha_status st;
    if ((st = kv_check_params(ctx, fn, p)) || (st = kv_check_tensors(ctx, fn, c)) ||
        (st = kv_check_mask(ctx, fn, &c->mask, c->B, c->H)) || (st = kv_check_lens(ctx, fn, c)) ||
        (st = kv_check_table(ctx, fn, c)))
        return st;
    c->scale = p->scale != 0 ? p->scale : (float)(1.0 / sqrt((double)c->D));
    c->softcap = p->softcap;
    /* the caches are written only when there are new rows; without them they are read, as q:
     * then they may share memory (k_cache = v_cache, a prefix expand()ed over the batch) */
    const int written = c->Lnew > 0;
    const char *kname = c->bt ? "k_pages" : "k_cache", *vname = c->bt ? "v_pages" : "v_cache";
    mha_tensor tl, tb; /* the lengths and the table are read while the outputs are written */
    const mha__attn_arg ins[7] = {
        {"q", c->q},
        {"k_new", c->k_new},
        {"v_new", c->v_new},
        {"cache_seqlens", mha__attn_int_view(c->lens, c->B, &tl)},
        {"block_table", c->bt && c->nbt > 0 ? mha__attn_int_view(c->bt, c->B * c->nbt, &tb) : NULL},
        {kname, c->kc},
        {vname, c->vc}};
    const mha__attn_arg outs[4] = {
        {kname, c->kc}, {vname, c->vc}, {"out", c->out}, {"lse", c->lse}};
    if ((st = mha__attn_check_aliases(ctx, fn, written ? outs : outs + 2, written ? 4 : 2, ins,
                                      written ? 5 : 7)))
        return st;
    if (c->B * c->H * c->L == 0 || is_decode(c)) return MHA_OK;
    /* prefill: what the dense core would refuse, refused now (batch 0 stands for all) */
    mha__attn_problem pr;
    mha_tensor qb = batch_view(c->q, 0, c->L), kb, vb;
    prefill_kv(c, 0, 0, &kb, &vb);
    mha_mask mk = prefill_mask(c, 0);
    return mha__attn_check_inputs(ctx, fn, p, &qb, &kb, &vb, &mk, &pr);
}

/* Cache rows cache_seqlens[b] .. + Lnew - 1 of every (b, kv head) = k_new, v_new. */
static void kv_append(const kv_call *c) {
    for (int64_t b = 0; b < c->B; b++)
        for (int64_t h = 0; h < c->Hkv; h++)
            for (int64_t t = 0; t < c->Lnew; t++) {
                const int64_t j = (c->lens ? c->lens[b] : 0) + t;
                memcpy(kv_cache_row(c, c->kc, b, h, j), kv_row(c->k_new, b, h, t),
                       kv_es(c) * (size_t)c->D);
                if (c->Dv > 0)
                    memcpy(kv_cache_row(c, c->vc, b, h, j), kv_row(c->v_new, b, h, t),
                           kv_es(c) * (size_t)c->Dv);
            }
}

/* ---- decode ---------------------------------------------------------------------------- */

/* Chunks, threads, and the call's workspace: the partials, the query rows and slopes, each
 * thread's merge row (one allocation). */
static void dec_plan(mha_ctx *ctx, kv_call *c, mha__plan *call) {
    int64_t maxlen = 0;
    for (int64_t b = 0; b < c->B; b++)
        if (kv_len(c, b) > maxlen) maxlen = kv_len(c, b);
    c->kern = mha__ctx_kernels(ctx);
    c->rows = c->L * c->group;
    c->nch = (maxlen + DEC_CHUNK - 1) / DEC_CHUNK;
    c->psz = c->rows * (2 + c->Dv);
    c->nt = mha__ctx_threads(ctx);
    /* a tiny problem is not worth waking threads for (as the dense forward) */
    if ((double)c->B * c->Hkv * maxlen * (c->D + c->Dv) * c->rows < (double)(1 << 18)) c->nt = 1;
    /* every key/value head of a chunk in one task (their rows interleave in memory with the
     * [B, S, Hkv, D] layout), unless that leaves fewer than 4 tasks per thread: then the heads
     * split into groups (a head's results do not depend on its group) */
    const int64_t base = c->B * c->nch;
    int64_t ng = base == 0 || base >= 4 * c->nt ? 1 : (4 * c->nt + base - 1) / base;
    /* heads stored one after another ([B, Hkv, S, D]): one per task, so that a task reads two
     * sequential streams (measured: 5-10% faster than interleaving them) */
    if (c->kc->stride[1] > c->kc->stride[2] && c->vc->stride[1] > c->vc->stride[2]) ng = c->Hkv;
    if (ng > c->Hkv) ng = c->Hkv;
    c->hg = (c->Hkv + ng - 1) / ng;
    c->nhg = (c->Hkv + c->hg - 1) / c->hg;
    /* a thread takes runs of consecutive chunks of a head group, about 4 runs per thread: it
     * then reads each cache stream on from where its last task stopped, and the prefetches
     * past a chunk's end fetch its own next chunk (one chunk at a time, the threads took
     * turns along each stream, and those prefetches fetched the other thread's keys: a float32
     * step ran 8-10% slower from a quiet memory, 2-3% from a shared one) */
    c->run = c->B * c->nch * c->nhg / (4 * c->nt);
    if (c->run < 1) c->run = 1;
    mha__plan_init(&c->plan);
    MHA__PLAN_ADD(&c->plan, dec_ws, orow, sizeof(float), 1, c->Dv);
    mha__plan_init(call);
    MHA__PLAN_ADD(call, kv_call, part, sizeof(float), c->B * c->nch * c->Hkv, c->psz);
    MHA__PLAN_ADD(call, kv_call, qs, sizeof(float), c->B * c->Hkv * c->rows, c->D);
    MHA__PLAN_ADD(call, kv_call, qb, sizeof(uint16_t),
                  c->dt == MHA_DTYPE_BF16 ? c->B * c->Hkv * c->rows : 0, c->D);
    MHA__PLAN_ADD(call, kv_call, slope, sizeof(float), c->B * c->Hkv, c->rows);
    MHA__PLAN_ADD_COPIES(call, kv_call, ws, &c->plan, c->nt);
}

/* The query rows of (b, key/value head kh) (the heads h that read it x the L tokens, row
 * r = (h % group) * L + i), float32 times scale (as the dense forward: (scale q) k), for a bf16
 * call also as they are (for kernels with bf16 dot products: mha__attn_decode_mask), and their
 * ALiBi slopes. */
static void dec_queries(const kv_call *c, int64_t bk) {
    const int64_t b = bk / c->Hkv, kh = bk % c->Hkv, h0 = kh * c->group;
    const int64_t shape[3] = {c->group, c->L, c->D}; /* q[b, h0 .. h0 + group): the rows */
    const mha_tensor qg =
        mha_tensor_typed(kv_row(c->q, b, h0, 0), c->dt, 3, shape, c->q->stride + 1);
    float *qs = c->qs + bk * c->rows * c->D;
    mha__tensor_to_f32(c->kern, &qg, qs, 1);
    mha__attn_scale_tile(c->kern, c->rows, c->D, c->scale, qs, c->D, qs);
    uint16_t *qb = c->dt == MHA_DTYPE_BF16 ? c->qb + bk * c->rows * c->D : NULL;
    for (int64_t r = 0; qb && r < c->rows; r++) {
        const uint16_t *row = kv_row(c->q, b, h0 + r / c->L, r % c->L);
        for (int64_t x = 0; x < c->D; x++) qb[r * c->D + x] = row[x * c->q->stride[3]];
    }
    const float *sl = c->mask.alibi_slopes;
    for (int64_t r = 0; sl && r < c->rows; r++)
        c->slope[bk * c->rows + r] = sl[(c->mask.alibi_batched ? b * c->H : 0) + h0 + r / c->L];
}

/* Row [Dv] of out at o = the float32 row x rounded once (a 2-byte out). */
static void dec_round_row(const kv_call *c, const float *x, void *o) {
    const mha_tensor ov = mha_tensor_typed(o, c->dt, 1, &c->Dv, NULL);
    mha__tensor_from_f32(c->kern, x, &ov, 1);
}

/* The key range [lo, hi) of row r (query token i of length len's sequence) within chunk
 * [j0, j0 + bc), and its ALiBi position: causality and the window aligned bottom-right. */
static void dec_row_range(const kv_call *c, int64_t i, int64_t len, int64_t j0, int64_t bc,
                          int64_t *lo, int64_t *hi, int64_t *pos) {
    const int64_t qp = i + len - c->L, far = len + c->L + 1; /* bounds beyond far: unbounded */
    int64_t a = 0, e = len;
    if (c->mask.causal != MHA_CAUSAL_NONE && qp + 1 < e) e = qp + 1;
    if (c->mask.window && c->mask.window_right >= 0 && c->mask.window_right < far &&
        qp + c->mask.window_right + 1 < e)
        e = qp + c->mask.window_right + 1;
    if (c->mask.window && c->mask.window_left >= 0 && c->mask.window_left < far &&
        qp - c->mask.window_left > a)
        a = qp - c->mask.window_left;
    a -= j0, e -= j0;
    *lo = a < 0 ? 0 : a > bc ? bc : a;
    *hi = e < *lo ? *lo : e > bc ? bc : e;
    *pos = qp - j0;
}

/* The partial softmax of the heads' rows into part (psz floats per head): head t's rows r
 * against keys [s0, s0 + n) of sequence b (within one page), from key/value head kh0 + t;
 * continuing part's partial of the keys before s0 when acc (the kernel's accumulate). 0 when no
 * row may see any of them (part untouched). */
static int dec_keys(const kv_call *c, int64_t b, int64_t kh0, int64_t nh, int64_t s0, int64_t n,
                    int acc, float *part) {
    const int64_t rows = c->rows, len = kv_len(c, b);
    int64_t lo[MHA__ATTN_DECODE_ROWS], hi[MHA__ATTN_DECODE_ROWS], pos[MHA__ATTN_DECODE_ROWS];
    int any = 0;
    for (int64_t r = 0; r < rows; r++) {
        dec_row_range(c, r % c->L, len, s0, n, &lo[r], &hi[r], &pos[r]);
        any |= lo[r] < hi[r];
    }
    if (!any) return 0;
    const int next = c->bt && s0 + n < len; /* the sequence goes on in another page */
    const int64_t bk0 = b * c->Hkv + kh0;   /* the task's first head's query rows and slopes */
    const mha__attn_decode_mask md = {
        .softcap = c->softcap,
        .lo = lo,
        .hi = hi,
        .slope = c->mask.alibi_slopes ? c->slope + bk0 * rows : NULL,
        .pos = pos,
        .qb = c->dt == MHA_DTYPE_BF16 ? c->qb + bk0 * rows * c->D : NULL,
        .ldqb = c->D,
        .sqb = rows * c->D,
        .scale = c->scale,
        .accumulate = acc,
        /* paged: where the keys after these are (prefetches) */
        .knext = next ? kv_cache_row(c, c->kc, b, kh0, s0 + n) : NULL,
        .vnext = next ? kv_cache_row(c, c->vc, b, kh0, s0 + n) : NULL};
    c->kern->attn_decode(c->dt, nh, rows, n, c->D, c->Dv, c->qs + bk0 * rows * c->D, c->D,
                         rows * c->D, kv_cache_row(c, c->kc, b, kh0, s0), c->kc->stride[2],
                         c->kc->stride[1], kv_cache_row(c, c->vc, b, kh0, s0), c->vc->stride[2],
                         c->vc->stride[1], &md, part, c->psz);
    return 1;
}

/* Task (b, group of key/value heads, chunk), chunks fastest: the chunk's partial softmax of each
 * head's rows, every head's key block after key block in one kernel call (with the [B, S, Hkv, D]
 * layout the heads of a key share its memory, so it is read in one pass). A chunk spanning pages
 * (paged caches) takes one call per page, each continuing the online softmax of the calls
 * before it (the kernel's accumulate); a chunk within one page (always, unpaged) is one call,
 * so paged caches whose page is a multiple of DEC_CHUNK give the bits of a contiguous cache. */
static void dec_chunk(const kv_call *c, int64_t task) {
    const int64_t ch = task % c->nch, hgi = task / c->nch % c->nhg, b = task / c->nch / c->nhg;
    const int64_t kh0 = hgi * c->hg, nh = c->Hkv - kh0 < c->hg ? c->Hkv - kh0 : c->hg;
    const int64_t rows = c->rows, len = kv_len(c, b), j0 = ch * DEC_CHUNK;
    const int64_t j1 = len - j0 < DEC_CHUNK ? len : j0 + DEC_CHUNK;
    float *part = c->part + ((b * c->nch + ch) * c->Hkv + kh0) * c->psz;
    int have = 0; /* part holds the partial of the keys before s0 */
    for (int64_t s0 = j0, s1; s0 < j1; s0 = s1) {
        s1 = (s0 / c->page + 1) * c->page;
        if (s1 > j1) s1 = j1;
        have |= dec_keys(c, b, kh0, nh, s0, s1 - s0, have, part);
    }
    if (have) return;
    /* the chunk is past the sequence, or outside every row's range */
    for (int64_t t = 0; t < nh; t++)
        for (int64_t r = 0; r < rows; r++)
            part[t * c->psz + r] = -INFINITY, part[t * c->psz + rows + r] = 0;
}

/* Merge (b, kv head): each row's chunks in chunk order by log-sum-exp, into out (computed in
 * float32: in place for a float32 out, else in w->orow, then rounded once) and lse. */
static void dec_merge(const kv_call *c, const dec_ws *w, int64_t bk) {
    const int64_t b = bk / c->Hkv, kh = bk % c->Hkv, rows = c->rows, Dv = c->Dv;
    const float *part = c->part + (b * c->nch * c->Hkv + kh) * c->psz; /* chunk 0 */
    const int64_t pst = c->Hkv * c->psz;                               /* chunk to chunk */
    for (int64_t r = 0; r < rows; r++) {
        const int64_t h = kh * c->group + r / c->L, i = r % c->L;
        void *orow = kv_row(c->out, b, h, i);
        float *o = c->dt == MHA_DTYPE_F32 ? orow : w->orow, M = -INFINITY, sum = 0;
        for (int64_t ch = 0; ch < c->nch; ch++) {
            const float mc = part[ch * pst + r];
            if (mc > M || isnan(mc)) M = mc;
        }
        for (int64_t x = 0; x < Dv; x++) o[x] = 0;
        if (M == -INFINITY) { /* no allowed key: out 0, lse -inf */
            if (o != orow) dec_round_row(c, o, orow);
            if (c->lse)
                c->lse
                    ->data[b * c->lse->stride[0] + h * c->lse->stride[1] + i * c->lse->stride[2]] =
                    -INFINITY;
            continue;
        }
        for (int64_t ch = 0; ch < c->nch; ch++) {
            const float *pc = part + ch * pst, mc = pc[r];
            if (mc == -INFINITY) continue; /* nothing from this chunk (its O unset) */
            const float a = expf(mc - M), *oc = pc + 2 * rows + r * Dv;
            sum += a * pc[rows + r];
            for (int64_t x = 0; x < Dv; x++) o[x] += a * oc[x];
        }
        const float inv = 1.0f / sum;
        for (int64_t x = 0; x < Dv; x++) o[x] *= inv;
        if (o != orow) dec_round_row(c, o, orow);
        if (c->lse)
            c->lse->data[b * c->lse->stride[0] + h * c->lse->stride[1] + i * c->lse->stride[2]] =
                M + logf(sum);
    }
}

/* Plans and allocates a decode call (before anything is written: a failure leaves the caches as
 * they were): the workspace into *buf, its views in c. */
static mha_status dec_alloc(mha_ctx *ctx, kv_call *c, void **buf) {
    mha__plan call;
    dec_plan(ctx, c, &call);
    mha_status st = mha__plan_alloc(&call, ctx, c->fn, 1, buf);
    if (st) return st;
    mha__plan_point(&call, *buf, 0, c);
    return MHA_OK;
}

/* The query rows, then every chunk task, then every merge. */
static void dec_run(const kv_call *c) {
    const int64_t ntask = c->B * c->nch * c->nhg, nmerge = c->B * c->Hkv;
#pragma omp parallel num_threads(c->nt) if (c->nt > 1)
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        dec_ws w;
        mha__plan_point(&c->plan, c->ws, tid, &w);
#pragma omp for schedule(static)
        for (int64_t t = 0; t < nmerge; t++) dec_queries(c, t);
#pragma omp for schedule(dynamic, c->run)
        for (int64_t t = 0; t < ntask; t++) dec_chunk(c, t);
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < nmerge; t++) dec_merge(c, &w, t);
    }
}

/* ---- prefill --------------------------------------------------------------------------- */

static mha_status prefill(mha_ctx *ctx, const mha_attn_params *p, const kv_call *c) {
    for (int64_t b = 0; b < c->B; b++) {
        mha_tensor qb = batch_view(c->q, b, c->L), kb, vb;
        mha_tensor ob = batch_view(c->out, b, c->L), lb;
        prefill_kv(c, b, 1, &kb, &vb);
        if (c->lse) lb = batch_view(c->lse, b, 0);
        mha_mask mk = prefill_mask(c, b);
        mha_status st = mha__attn_forward_seq(ctx, c->fn, p, &qb, &kb, &vb, &mk, &ob,
                                              c->lse ? &lb : NULL, (mha__attn_origin){0, 0, 0});
        if (st) return st;
    }
    return MHA_OK;
}

/* A validated call: append, then decode or prefill. Memory a decode or a paged prefill needs is
 * allocated before the caches are written. */
static mha_status kv_run(mha_ctx *ctx, const mha_attn_params *p, kv_call *c) {
    mha_status st = kv_check(ctx, p, c);
    if (st) return st;
    if (c->B * c->H * c->L == 0 || !is_decode(c)) {
        if (c->bt && c->B * c->H * c->L > 0) { /* room for the longest sequence's rows */
            int64_t maxlen = 0;
            for (int64_t b = 0; b < c->B; b++)
                if (kv_len(c, b) > maxlen) maxlen = kv_len(c, b);
            const double bytes = (double)maxlen * c->Hkv * (c->D + c->Dv) * kv_es(c);
            c->gather = bytes < 9e18 ? mha__malloc((size_t)bytes > 0 ? (size_t)bytes : 1) : NULL;
            if (!c->gather)
                return mha__err(ctx, MHA_ERR_NOMEM,
                                "%s: out of memory (%.0f bytes for a contiguous copy of a "
                                "sequence's pages)",
                                c->fn, bytes);
        }
        kv_append(c);
        st = c->B * c->H * c->L == 0 ? MHA_OK : prefill(ctx, p, c);
        mha__free(c->gather);
        return st;
    }
    void *buf;
    if ((st = dec_alloc(ctx, c, &buf))) return st;
    kv_append(c);
    dec_run(c);
    mha__free(buf);
    return MHA_OK;
}

/* A paged call's table into c (a table of no blocks for max_blocks 0): NULL only with max_blocks
 * 0 (rows: the name of its first dimension in fn's documentation). */
static mha_status kv_table_arg(mha_ctx *ctx, const char *fn, const int32_t *block_table,
                               int64_t max_blocks, const char *rows, kv_call *c) {
    static const int32_t none[1] = {0};
    if (!block_table && max_blocks > 0)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: block_table: got NULL with max_blocks %lld, expected the table "
                        "[%s, max_blocks]",
                        fn, (long long)max_blocks, rows);
    c->bt = block_table ? block_table : none, c->nbt = max_blocks;
    return MHA_OK;
}

mha_status mha__attn_kvcache(mha_ctx *ctx, const char *fn, const mha_attn_params *p,
                             const mha_tensor *q, mha_tensor *k_cache, mha_tensor *v_cache,
                             const mha_tensor *k_new, const mha_tensor *v_new,
                             const int32_t *cache_seqlens, const mha_mask *mask, mha_tensor *out,
                             mha_tensor *lse) {
    mha__clear(ctx);
    kv_call c;
    memset(&c, 0, sizeof c);
    c.fn = fn, c.q = q, c.kc = k_cache, c.vc = v_cache, c.k_new = k_new, c.v_new = v_new;
    c.lens = cache_seqlens, c.out = out, c.lse = lse;
    c.mask = mask ? *mask : mha_mask_default();
    return kv_run(ctx, p, &c);
}

mha_status mha_attn_kvcache(mha_ctx *ctx, const mha_attn_params *p, const mha_tensor *q,
                            mha_tensor *k_cache, mha_tensor *v_cache, const mha_tensor *k_new,
                            const mha_tensor *v_new, const int32_t *cache_seqlens,
                            const mha_mask *mask, mha_tensor *out, mha_tensor *lse) {
    return mha__attn_kvcache(ctx, "mha_attn_kvcache", p, q, k_cache, v_cache, k_new, v_new,
                             cache_seqlens, mask, out, lse);
}

mha_status mha_attn_kvcache_paged(mha_ctx *ctx, const mha_attn_params *p, const mha_tensor *q,
                                  mha_tensor *k_pages, mha_tensor *v_pages,
                                  const int32_t *block_table, int64_t max_blocks,
                                  const mha_tensor *k_new, const mha_tensor *v_new,
                                  const int32_t *cache_seqlens, const mha_mask *mask,
                                  mha_tensor *out, mha_tensor *lse) {
    static const char fn[] = "mha_attn_kvcache_paged";
    mha__clear(ctx);
    kv_call c;
    memset(&c, 0, sizeof c);
    mha_status st = kv_table_arg(ctx, fn, block_table, max_blocks, "B", &c);
    if (st) return st;
    c.fn = fn, c.q = q, c.kc = k_pages, c.vc = v_pages, c.k_new = k_new, c.v_new = v_new;
    c.lens = cache_seqlens, c.out = out, c.lse = lse;
    c.mask = mask ? *mask : mha_mask_default();
    return kv_run(ctx, p, &c);
}

/* ---- packed queries on paged caches (mha_attn_varlen_paged) ---------------------------- */

/* The [n, H, Lq, X] view of n sequences of Lq query rows each, packed one after another from
 * token row r0 of a [T, H, X] tensor (no copy). */
static mha_tensor run_view(const mha_tensor *t, int64_t r0, int64_t n, int64_t Lq) {
    const int64_t shape[4] = {n, t->shape[1], Lq, t->shape[2]};
    const int64_t stride[4] = {Lq * t->stride[0], t->stride[1], t->stride[0], t->stride[2]};
    return mha_tensor_typed((char *)t->ptr + r0 * t->stride[0] * (int64_t)mha__tensor_elsize(t),
                            t->dtype, 4, shape, stride);
}

/* The same of an lse [H, T]: [n, H, Lq]. */
static mha_tensor run_lse(const mha_tensor *t, int64_t r0, int64_t n, int64_t Lq) {
    const int64_t shape[3] = {n, t->shape[0], Lq};
    const int64_t stride[3] = {Lq * t->stride[1], t->stride[0], t->stride[1]};
    return mha_tensor_strided(t->data + r0 * t->stride[1], 3, shape, stride);
}

/* Everything mha_attn_varlen_paged takes, checked against the packed shapes, with the messages
 * naming its own arguments. w: the whole batch as one call's pools, table and lengths (for
 * kv_check_pages and kv_check_table, whose messages then name the caller's sequence indices). */
static mha_status vp_check(mha_ctx *ctx, const char *fn, const mha_attn_params *p,
                           const mha_tensor *q, const int32_t *cq, int64_t batch,
                           const mha_mask *mask, kv_call *w) {
    mha_status st;
    const mha_attn_params dp = mha_attn_params_default();
    if ((st = kv_check_params(ctx, fn, p ? p : &dp))) return st;
    const mha_dtype qt = q ? q->dtype : MHA_DTYPE_F32;
    const mha_dtype dt = w->dt = qt == MHA_DTYPE_BF16 || qt == MHA_DTYPE_F16 ? qt : MHA_DTYPE_F32;
    if ((st = mha__check_tensor_as(ctx, fn, "q", q, dt, 3, NULL, "[Tq, H, D]"))) return st;
    const int64_t Tq = q->shape[0], H = w->H = q->shape[1], D = w->D = q->shape[2];
    if (D < 1)
        return mha__err(ctx, MHA_ERR_SHAPE, "%s: q.shape[2]: got %lld, expected >= 1 (head dim)",
                        fn, (long long)D);
    const int64_t wk[4] = {-1, -1, -1, D};
    if ((st = mha__check_tensor_as(ctx, fn, "k_pages", w->kc, dt, 4, wk,
                                   "[P, Hkv, page, D], D as q's")))
        return st;
    const int64_t Hkv = w->Hkv = w->kc->shape[1];
    if (batch < 0)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: batch: got %lld, expected >= 0", fn,
                        (long long)batch);
    w->B = batch;
    if ((st = kv_check_pages(ctx, fn, w))) return st;
    if (H > 0 && (Hkv < 1 || H % Hkv != 0))
        return mha__err(ctx, MHA_ERR_SHAPE,
                        "%s: k_pages.shape[1]: got %lld, expected a divisor of q's %lld heads "
                        "(grouped-query attention: query head h uses key/value head h / (H / Hkv))",
                        fn, (long long)Hkv, (long long)H);
    const int64_t wv[4] = {w->npages, Hkv, w->page, -1};
    if ((st = mha__check_tensor_as(ctx, fn, "v_pages", w->vc, dt, 4, wv,
                                   "[P, Hkv, page, Dv] as k_pages")))
        return st;
    const int64_t Dv = w->vc->shape[3], wo[3] = {Tq, H, Dv}, wl[2] = {H, Tq};
    if ((st = mha__check_tensor_as(ctx, fn, "out", w->out, dt, 3, wo, "[Tq, H, Dv]"))) return st;
    if (w->lse && (st = mha__check_tensor(ctx, fn, "lse", w->lse, 2, wl, "[H, Tq]"))) return st;
    if ((st = mha__attn_check_cu(ctx, fn, "cu_seqlens_q", cq, batch, Tq, "q"))) return st;
    if (batch > 0 && !w->lens)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: seqlens_k: got NULL, expected int32 [batch] = [%lld] (each "
                        "sequence's keys in its pages)",
                        fn, (long long)batch);
    for (int64_t s = 0; s < batch; s++)
        if (w->lens[s] < 0 || w->lens[s] > w->Smax)
            return mha__err(ctx, MHA_ERR_INVALID_ARG,
                            "%s: seqlens_k[%lld]: got %lld, expected 0 .. %lld (the keys a "
                            "sequence's max_blocks x page rows hold)",
                            fn, (long long)s, (long long)w->lens[s], (long long)w->Smax);
    if ((st = kv_check_table(ctx, fn, w))) return st;
    if ((st = kv_check_mask(ctx, fn, mask, batch, H))) return st;
    mha_tensor tq, tl, tb; /* the lengths and the table are read while out is written */
    const mha__attn_arg ins[6] = {
        {"q", q},
        {"k_pages", w->kc},
        {"v_pages", w->vc},
        {"cu_seqlens_q", mha__attn_int_view(cq, batch + 1, &tq)},
        {"seqlens_k", mha__attn_int_view(w->lens, batch, &tl)},
        {"block_table", w->nbt > 0 ? mha__attn_int_view(w->bt, batch * w->nbt, &tb) : NULL}};
    const mha__attn_arg outs[2] = {{"out", w->out}, {"lse", w->lse}};
    return mha__attn_check_aliases(ctx, fn, outs, 2, ins, 6);
}

mha_status mha_attn_varlen_paged(mha_ctx *ctx, const mha_attn_params *p, const mha_tensor *q,
                                 const mha_tensor *k_pages, const mha_tensor *v_pages,
                                 const int32_t *block_table, int64_t max_blocks,
                                 const int32_t *cu_seqlens_q, const int32_t *seqlens_k,
                                 int64_t batch, const mha_mask *mask, mha_tensor *out,
                                 mha_tensor *lse) {
    static const char fn[] = "mha_attn_varlen_paged";
    mha__clear(ctx);
    kv_call w; /* the whole batch (checks only: the caches are read, never written) */
    memset(&w, 0, sizeof w);
    mha_status st = kv_table_arg(ctx, fn, block_table, max_blocks, "batch", &w);
    if (st) return st;
    w.kc = (mha_tensor *)k_pages, w.vc = (mha_tensor *)v_pages, w.out = out, w.lse = lse;
    w.lens = seqlens_k;
    if ((st = vp_check(ctx, fn, p, q, cu_seqlens_q, batch, mask, &w))) return st;
    /* runs of consecutive sequences with the same number of query rows (an engine's decoding
     * sequences, one row each, usually come together) are one kvcache call each, a batch of
     * [n, H, Lq, D] views; a sequence's results do not depend on its run (the decode chunks
     * are fixed key ranges, and a prefill runs per sequence) */
    for (int64_t s0 = 0, s1; s0 < batch; s0 = s1) {
        const int64_t r0 = cu_seqlens_q[s0], Lq = cu_seqlens_q[s0 + 1] - r0;
        for (s1 = s0 + 1; s1 < batch && cu_seqlens_q[s1 + 1] - cu_seqlens_q[s1] == Lq; s1++) {}
        if (Lq == 0) continue; /* no query rows: nothing to write */
        mha_tensor qv = run_view(q, r0, s1 - s0, Lq), ov = run_view(out, r0, s1 - s0, Lq), lv;
        if (lse) lv = run_lse(lse, r0, s1 - s0, Lq);
        kv_call c;
        memset(&c, 0, sizeof c);
        c.fn = fn, c.q = &qv, c.kc = w.kc, c.vc = w.vc, c.out = &ov, c.lse = lse ? &lv : NULL;
        c.lens = seqlens_k + s0, c.bt = w.bt + s0 * max_blocks, c.nbt = max_blocks;
        c.mask = mask ? *mask : mha_mask_default();
        if (c.mask.alibi_slopes && c.mask.alibi_batched) c.mask.alibi_slopes += s0 * w.H;
        if ((st = kv_run(ctx, p, &c))) return st;
    }
    return MHA_OK;
}
