/* paged_store.c - mha_paged_store: new tokens' keys and values written into paged caches by
 * slot (vLLM's reshape_and_cache), for the calls that only read the pools (mha_attn_varlen_paged:
 * an engine writes the step's tokens first, then attends).
 *
 * Slot s is row s % page of page s / page, every key/value head. Everything is checked before
 * the first row is written: the shapes and dtypes, every slot (in range, or -1: skip the token),
 * no slot given to two tokens (sorted copies of the slots, the token indices alongside, so that
 * the message names both), and the pools against the tokens' rows and the slots (aliasing). */
#include "attn_common.h"

#include <stdlib.h>
#include <string.h>

/* A slot and the token it came from, for the duplicate check. */
typedef struct {
    int64_t slot, token;
} slot_ref;

static int slot_cmp(const void *a, const void *b) {
    const slot_ref *x = a, *y = b;
    if (x->slot != y->slot) return x->slot < y->slot ? -1 : 1;
    return x->token < y->token ? -1 : x->token > y->token;
}

/* The pools' and tokens' shapes against each other, one dtype (k_pages'). */
static mha_status store_check_tensors(mha_ctx *ctx, const char *fn, const mha_tensor *kp,
                                      const mha_tensor *vp, const mha_tensor *k,
                                      const mha_tensor *v) {
    mha_status st;
    const mha_dtype pt = kp ? kp->dtype : MHA_DTYPE_F32;
    const mha_dtype dt = pt == MHA_DTYPE_BF16 || pt == MHA_DTYPE_F16 ? pt : MHA_DTYPE_F32;
    if ((st = mha__check_tensor_as(ctx, fn, "k_pages", kp, dt, 4, NULL, "[P, Hkv, page, D]")))
        return st;
    const int64_t wv[4] = {kp->shape[0], kp->shape[1], kp->shape[2], -1};
    if ((st = mha__check_tensor_as(ctx, fn, "v_pages", vp, dt, 4, wv,
                                   "[P, Hkv, page, Dv] as k_pages")))
        return st;
    const int64_t wk[3] = {-1, kp->shape[1], kp->shape[3]};
    if ((st =
             mha__check_tensor_as(ctx, fn, "k", k, dt, 3, wk, "[T, Hkv, D], Hkv and D as k_pages")))
        return st;
    const int64_t wvt[3] = {k->shape[0], kp->shape[1], vp->shape[3]};
    return mha__check_tensor_as(ctx, fn, "v", v, dt, 3, wvt, "[T, Hkv, Dv], T as k, Dv as v_pages");
}

/* Every slot -1 or in [0, rows), no two tokens on one slot. */
static mha_status store_check_slots(mha_ctx *ctx, const char *fn, const int64_t *slots, int64_t T,
                                    int64_t rows) {
    int64_t n = 0;
    for (int64_t t = 0; t < T; t++) {
        const int64_t s = slots[t];
        if (s < -1 || s >= rows)
            return mha__err(ctx, MHA_ERR_INVALID_ARG,
                            "%s: slot_mapping[%lld]: got %lld, expected -1 (skip the token) or a "
                            "slot in [0, %lld) (k_pages' pages x rows per page)",
                            fn, (long long)t, (long long)s, (long long)rows);
        n += s >= 0;
    }
    if (n < 2) return MHA_OK;
    slot_ref *r = mha__malloc(sizeof(slot_ref) * (size_t)n);
    if (!r)
        return mha__err(ctx, MHA_ERR_NOMEM, "%s: slot_mapping: out of memory (%lld slots)", fn,
                        (long long)n);
    n = 0;
    for (int64_t t = 0; t < T; t++)
        if (slots[t] >= 0) r[n].slot = slots[t], r[n++].token = t;
    qsort(r, (size_t)n, sizeof *r, slot_cmp);
    mha_status st = MHA_OK;
    for (int64_t i = 1; i < n && !st; i++)
        if (r[i].slot == r[i - 1].slot)
            st = mha__err(ctx, MHA_ERR_INVALID_ARG,
                          "%s: slot_mapping[%lld]: got %lld, also slot_mapping[%lld]'s, expected "
                          "a slot of its own (two tokens cannot share a cache row)",
                          fn, (long long)r[i].token, (long long)r[i].slot,
                          (long long)r[i - 1].token);
    mha__free(r);
    return st;
}

mha_status mha_paged_store(mha_ctx *ctx, mha_tensor *k_pages, mha_tensor *v_pages,
                           const mha_tensor *k, const mha_tensor *v, const int64_t *slot_mapping) {
    static const char fn[] = "mha_paged_store";
    mha__clear(ctx);
    mha_status st = store_check_tensors(ctx, fn, k_pages, v_pages, k, v);
    if (st) return st;
    const int64_t T = k->shape[0], P = k_pages->shape[0], Hkv = k_pages->shape[1];
    const int64_t page = k_pages->shape[2], D = k_pages->shape[3], Dv = v_pages->shape[3];
    if (T > 0 && !slot_mapping)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: slot_mapping: got NULL, expected int64 [T] = [%lld] (each token's "
                        "slot, or -1)",
                        fn, (long long)T);
    /* the slots the pools hold (a pool too large to count, a stride-0 view: INT64_MAX) */
    const int64_t rows = page > 0 && P > INT64_MAX / page ? INT64_MAX : P * page;
    if ((st = store_check_slots(ctx, fn, slot_mapping, T, rows))) return st;
    int64_t n2 = 2 * T; /* the slots' bytes, as float pairs, for the aliasing check */
    mha_tensor ts = mha_tensor_strided((float *)(uintptr_t)slot_mapping, 1, &n2, NULL);
    const mha__attn_arg ins[3] = {{"k", k}, {"v", v}, {"slot_mapping", T > 0 ? &ts : NULL}};
    const mha__attn_arg outs[2] = {{"k_pages", k_pages}, {"v_pages", v_pages}};
    if ((st = mha__attn_check_aliases(ctx, fn, outs, 2, ins, 3))) return st;
    const size_t es = mha__tensor_elsize(k_pages);
    for (int64_t t = 0; t < T; t++) {
        const int64_t s = slot_mapping[t];
        if (s < 0) continue;
        for (int64_t h = 0; h < Hkv; h++) {
            memcpy(mha__attn_row_at(k_pages, s / page, h, s % page),
                   (const char *)k->ptr + (t * k->stride[0] + h * k->stride[1]) * (int64_t)es,
                   es * (size_t)D);
            if (Dv > 0)
                memcpy(mha__attn_row_at(v_pages, s / page, h, s % page),
                       (const char *)v->ptr + (t * v->stride[0] + h * v->stride[1]) * (int64_t)es,
                       es * (size_t)Dv);
        }
    }
    return MHA_OK;
}
