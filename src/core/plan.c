/* plan.c - workspaces planned once (plan.h). */
#include "plan.h"

#include <string.h>

void mha__plan_init(mha__plan *pl) { memset(pl, 0, sizeof *pl); }

void mha__plan_add(mha__plan *pl, const char *name, size_t field, size_t elem, int64_t n1,
                   int64_t n2) {
    if (pl->bad) return;
    size_t a, bytes, padded, end;
    if (pl->n == MHA__PLAN_MAX || n1 < 0 || n2 < 0 || !mha__mul_size(elem, (size_t)n1, &a) ||
        !mha__mul_size(a, (size_t)n2, &bytes) || !mha__add_size(bytes, 63, &padded) ||
        !mha__add_size(pl->per_copy, padded / 64 * 64, &end)) {
        pl->bad = 1;
        pl->bad_name = name;
        return;
    }
    pl->reg[pl->n].name = name;
    pl->reg[pl->n].field = field;
    pl->reg[pl->n].offset = pl->per_copy;
    pl->reg[pl->n].bytes = bytes;
    pl->n++;
    pl->per_copy = end;
}

void mha__plan_add_copies(mha__plan *pl, const char *name, size_t field, const mha__plan *inner,
                          int64_t copies) {
    if (inner->bad) {
        if (!pl->bad) pl->bad = 1, pl->bad_name = name;
        return;
    }
    mha__plan_add(pl, name, field, inner->per_copy, copies, 1);
}

int mha__plan_bytes(const mha__plan *pl, int copies, size_t *bytes) {
    return !pl->bad && copies >= 1 && mha__mul_size(pl->per_copy, (size_t)copies, bytes);
}

mha_status mha__plan_alloc(const mha__plan *pl, mha_ctx *ctx, const char *fn, int copies,
                           void **ws) {
    size_t bytes;
    *ws = NULL;
    if (pl->bad)
        return mha__err(ctx, MHA_ERR_NOMEM, "%s: workspace: the size of '%s' overflows", fn,
                        pl->bad_name ? pl->bad_name : "?");
    if (!mha__plan_bytes(pl, copies, &bytes))
        return mha__err(ctx, MHA_ERR_NOMEM, "%s: workspace: %d copies of %zu bytes overflow", fn,
                        copies, pl->per_copy);
    if (!(*ws = mha__malloc(bytes)))
        return mha__err(ctx, MHA_ERR_NOMEM, "%s: workspace: out of memory (%zu bytes)", fn, bytes);
    return MHA_OK;
}

void mha__plan_point(const mha__plan *pl, void *ws, int copy, void *views) {
    char *base = (char *)ws + pl->per_copy * (size_t)copy;
    for (int i = 0; i < pl->n; i++) {
        void *p = base + pl->reg[i].offset;
        memcpy((char *)views + pl->reg[i].field, &p, sizeof p);
    }
}
