/* convert.c - float32 copies of bf16 / f16 tensor views and back: how a call that computes in
 * float32 takes 2-byte inputs (exact conversions up, one round-to-nearest-even down: the
 * definitions of src/kernels/cvt.h). */
#include "core/plan.h"
#include "internal.h"
#include "kernels/kernels.h"

#include <string.h>

/* Row r (all dimensions but the last, in C order) of a view: its offset in elements. */
static int64_t row_offset(const mha_tensor *t, int64_t r) {
    int64_t off = 0;
    for (int d = t->ndim - 2; d >= 0; d--) {
        off += (r % t->shape[d]) * t->stride[d];
        r /= t->shape[d];
    }
    return off;
}

/* dst[n] = the n elements at src of dtype dt, exactly */
static void row_to_f32(const mha_kernels *k, mha_dtype dt, const void *src, float *dst, int64_t n) {
    if (dt == MHA_DTYPE_F32) memcpy(dst, src, sizeof(float) * (size_t)n);
    else k->cvt_to_f32(dt, src, dst, n);
}

/* dst[n] of dtype dt = src[n], each rounded once */
static void row_from_f32(const mha_kernels *k, mha_dtype dt, const float *src, void *dst,
                         int64_t n) {
    if (dt == MHA_DTYPE_F32) memcpy(dst, src, sizeof(float) * (size_t)n);
    else k->cvt_from_f32(dt, src, dst, n);
}

void mha__convert_elems(const mha_kernels *k, mha_dtype sdt, const void *src, mha_dtype ddt,
                        void *dst, int64_t n) {
    if (sdt == ddt) {
        memcpy(dst, src, (sdt == MHA_DTYPE_F32 ? sizeof(float) : sizeof(uint16_t)) * (size_t)n);
    } else if (sdt == MHA_DTYPE_F32) {
        k->cvt_from_f32(ddt, src, dst, n);
    } else if (ddt == MHA_DTYPE_F32) {
        k->cvt_to_f32(sdt, src, dst, n);
    } else { /* bf16 <-> f16: through float32 (exact), a chunk at a time */
        float buf[1024];
        for (int64_t i = 0; i < n; i += 1024) {
            const int64_t c = n - i < 1024 ? n - i : 1024;
            k->cvt_to_f32(sdt, (const uint16_t *)src + i, buf, c);
            k->cvt_from_f32(ddt, buf, (uint16_t *)dst + i, c);
        }
    }
}

/* The number of rows and the row length of a validated view (ndim >= 1). */
static void rows_of(const mha_tensor *t, int64_t *rows, int64_t *n) {
    *rows = 1;
    for (int d = 0; d < t->ndim - 1; d++) *rows *= t->shape[d];
    *n = t->ndim ? t->shape[t->ndim - 1] : 1;
}

void mha__tensor_to_f32(const mha_kernels *k, const mha_tensor *src, float *dst, int nt) {
    int64_t rows, n;
    rows_of(src, &rows, &n);
    const size_t es = mha__tensor_elsize(src);
    (void)nt; /* (without OpenMP) */
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1 && rows * n > (1 << 16))
    for (int64_t r = 0; r < rows; r++)
        row_to_f32(k, src->dtype, (const char *)src->ptr + row_offset(src, r) * (int64_t)es,
                   dst + r * n, n);
}

void mha__tensor_from_f32(const mha_kernels *k, const float *src, const mha_tensor *dst, int nt) {
    int64_t rows, n;
    rows_of(dst, &rows, &n);
    const size_t es = mha__tensor_elsize(dst);
    (void)nt;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1 && rows * n > (1 << 16))
    for (int64_t r = 0; r < rows; r++)
        row_from_f32(k, dst->dtype, src + r * n,
                     (char *)dst->ptr + row_offset(dst, r) * (int64_t)es, n);
}

mha_status mha_tensor_convert(mha_ctx *ctx, const mha_tensor *src, mha_tensor *dst) {
    static const char *const fn = "mha_tensor_convert";
    mha__clear(ctx);
    mha_status st;
    for (int i = 0; i < 2; i++) {
        const mha_tensor *t = i ? dst : src;
        const char *name = i ? "dst" : "src";
        if (!t)
            return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: %s: got NULL, expected a tensor", fn,
                            name);
        if (t->dtype != MHA_DTYPE_F32 && t->dtype != MHA_DTYPE_BF16 && t->dtype != MHA_DTYPE_F16)
            return mha__err(ctx, MHA_ERR_UNSUPPORTED,
                            "%s: %s.dtype: got %s, expected float32, bfloat16 or float16", fn, name,
                            mha_dtype_name(t->dtype));
        if (t->ndim < 1 || t->ndim > MHA_MAX_DIMS)
            return mha__err(ctx, MHA_ERR_SHAPE, "%s: %s.ndim: got %d, expected 1..%d", fn, name,
                            t->ndim, MHA_MAX_DIMS);
        if ((st = mha__check_tensor_as(ctx, fn, name, t, t->dtype, src->ndim, i ? src->shape : NULL,
                                       i ? "the shape of src" : NULL)))
            return st;
    }
    if (src->ptr == dst->ptr && src->dtype == dst->dtype &&
        !memcmp(src->stride, dst->stride, sizeof(int64_t) * (size_t)src->ndim))
        return MHA_OK; /* the same view */
    if (mha__tensor_self_overlaps(dst))
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: dst: got a view whose elements share memory (a stride-0 dimension?), "
                        "expected distinct elements",
                        fn);
    if (mha__tensors_overlap(src, dst))
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: dst overlaps src (expected separate memory)",
                        fn);
    const int64_t n = mha_tensor_numel(src);
    if (n == 0) return MHA_OK;
    int64_t rows, len;
    rows_of(src, &rows, &len);
    float *row = mha__malloc(sizeof(float) * (size_t)len);
    if (!row)
        return mha__err(ctx, MHA_ERR_NOMEM, "%s: out of memory (a row of %lld floats)", fn,
                        (long long)len);
    const size_t es = mha__tensor_elsize(src), ed = mha__tensor_elsize(dst);
    const mha_kernels *kern = mha__ctx_kernels(ctx);
    for (int64_t r = 0; r < rows; r++) { /* one row at a time through float32 */
        row_to_f32(kern, src->dtype, (const char *)src->ptr + row_offset(src, r) * (int64_t)es, row,
                   len);
        row_from_f32(kern, dst->dtype, row, (char *)dst->ptr + row_offset(dst, r) * (int64_t)ed,
                     len);
    }
    mha__free(row);
    return MHA_OK;
}

/* The views of a mha__lowp's buffer (one float32 region per tensor). */
typedef struct {
    float *t[MHA__LOWP_MAX];
} lowp_views;

mha_status mha__lowp_begin(mha_ctx *ctx, const char *fn, mha__lowp *lp, int n,
                           const mha__lowp_arg *args) {
    memset(lp, 0, sizeof *lp);
    lp->n = n;
    lp->nt = mha__ctx_threads(ctx);
    lp->kern = mha__ctx_kernels(ctx);
    mha__plan pl;
    mha__plan_init(&pl);
    for (int i = 0; i < n; i++) {
        lp->arg[i] = args[i];
        const mha_tensor *t = args[i].t;
        mha__plan_add(&pl, args[i].name, offsetof(lowp_views, t) + (size_t)i * sizeof(float *),
                      sizeof(float), t ? mha_tensor_numel(t) : 0, 1);
    }
    mha_status st = mha__plan_alloc(&pl, ctx, fn, 1, &lp->mem);
    if (st) return st;
    lowp_views v;
    mha__plan_point(&pl, lp->mem, 0, &v);
    for (int i = 0; i < n; i++) {
        const mha_tensor *t = args[i].t;
        if (!t) continue;
        lp->f32[i] = mha_tensor_make(v.t[i], t->ndim, t->shape);
        if (args[i].out == 0) mha__tensor_to_f32(lp->kern, t, v.t[i], lp->nt);
    }
    return MHA_OK;
}

mha_tensor *mha__lowp_view(mha__lowp *lp, int i) { return lp->arg[i].t ? &lp->f32[i] : NULL; }

void mha__lowp_end(mha__lowp *lp, mha_status st) {
    for (int i = 0; i < lp->n && st == MHA_OK; i++)
        if (lp->arg[i].out == 1 && lp->arg[i].t)
            mha__tensor_from_f32(lp->kern, lp->f32[i].data, (mha_tensor *)lp->arg[i].t, lp->nt);
    mha__free(lp->mem);
    lp->mem = NULL;
}
