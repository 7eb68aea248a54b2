/* plan.h - a workspace planned once (llm.c's malloc_and_point): a driver declares its named
 * regions, the planner checks every size for overflow once, makes one allocation (optionally
 * one copy per thread) and points a struct of views into it. No offsets computed by hand.
 *
 *     typedef struct { float *kp, *acc; uint8_t *keep; } fwd_views;
 *     mha__plan pl;
 *     mha__plan_init(&pl);
 *     MHA__PLAN_ADD(&pl, fwd_views, kp, sizeof(float), nslot, BC * D);
 *     MHA__PLAN_ADD(&pl, fwd_views, acc, sizeof(float), BR, Dv);
 *     MHA__PLAN_ADD(&pl, fwd_views, keep, 1, BR, BC);
 *     void *ws;
 *     if ((st = mha__plan_alloc(&pl, ctx, FN, nt, &ws))) return st;  // nt copies
 *     ... in thread t: fwd_views w; mha__plan_point(&pl, ws, t, &w);
 *     mha__free(ws);
 *
 * Every region starts on a 64-byte boundary; a region of 0 bytes gets a valid (unusable)
 * pointer. Never installed. */
#ifndef MHA_PLAN_H
#define MHA_PLAN_H

#include "internal.h"

#include <stddef.h>
#include <stdint.h>

#define MHA__PLAN_MAX 32

typedef struct {
    int n;                /* regions declared */
    int bad;              /* a size overflowed, was negative, or too many regions */
    const char *bad_name; /* the region that did */
    size_t per_copy;      /* bytes of one copy, a multiple of 64 */
    struct {
        const char *name;
        size_t field;  /* offsetof the view (a pointer) in the caller's struct */
        size_t offset; /* bytes from the start of a copy */
        size_t bytes;
    } reg[MHA__PLAN_MAX];
} mha__plan;

void mha__plan_init(mha__plan *pl);
/* Declares a region of elem * n1 * n2 bytes (n1, n2 >= 0), whose address goes to the pointer
 * at byte offset `field` of the views struct. */
void mha__plan_add(mha__plan *pl, const char *name, size_t field, size_t elem, int64_t n1,
                   int64_t n2);
#define MHA__PLAN_ADD(pl, type, view, elem, n1, n2)                                                \
    mha__plan_add((pl), #view, offsetof(type, view), (elem), (n1), (n2))
/* Declares a region holding `copies` copies of the plan inner (one per thread, say), each
 * copy's regions together: point a copy's views with mha__plan_point(inner, region, t, ...).
 * An overflow in inner makes this plan's allocation fail, naming `name`. */
void mha__plan_add_copies(mha__plan *pl, const char *name, size_t field, const mha__plan *inner,
                          int64_t copies);
#define MHA__PLAN_ADD_COPIES(pl, type, view, inner, copies)                                        \
    mha__plan_add_copies((pl), #view, offsetof(type, view), (inner), (copies))
/* Bytes of `copies` copies; 0 (and *bytes untouched) when that overflows. */
int mha__plan_bytes(const mha__plan *pl, int copies, size_t *bytes);
/* One allocation of `copies` copies into *ws (free it with mha__free). MHA_ERR_NOMEM with
 * "fn: workspace: ..." naming the region whose size overflowed, or the bytes that could not
 * be allocated. */
mha_status mha__plan_alloc(const mha__plan *pl, mha_ctx *ctx, const char *fn, int copies,
                           void **ws);
/* Points every view of `views` (the struct the regions were declared with) into copy `copy`
 * of ws. */
void mha__plan_point(const mha__plan *pl, void *ws, int copy, void *views);

#endif
