/* rotary.c - mha_rotary: rotary position embeddings (RoFormer, Su et al. 2021) in place on a
 * [B, H, L, D] view, as FlashAttention's apply_rotary_emb with its rotary_cos / rotary_sin
 * tables: the first R = 2 * cos.shape[1] dimensions of every row turn by the angles of its
 * position, pairs (2k, 2k + 1) (GPT-J, interleaved) or (k, k + R / 2) (GPT-NeoX); the rest of
 * the row is left as it is. Each element is computed in float32 (x0 c - x1 s, x0 s + x1 c) and
 * rounded once to x's dtype. */
#include "attn_common.h"
#include "kernels/cvt.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* x, cos, sin and the positions against each other; nothing is written before this passes. */
static mha_status rot_check(mha_ctx *ctx, const char *fn, const mha_tensor *x,
                            const mha_tensor *cos, const mha_tensor *sin,
                            const int32_t *positions) {
    mha_status st;
    if (!x) return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: x: got NULL, expected a tensor", fn);
    const mha_dtype dt = x->dtype;
    if (dt != MHA_DTYPE_F32 && dt != MHA_DTYPE_BF16 && dt != MHA_DTYPE_F16)
        return mha__err(ctx, MHA_ERR_UNSUPPORTED,
                        "%s: x.dtype: got %s, expected float32, bfloat16 or float16", fn,
                        mha_dtype_name(dt));
    if ((st = mha__check_tensor_as(ctx, fn, "x", x, dt, 4, NULL, "[B, H, L, D]")) ||
        (st = mha__check_tensor(ctx, fn, "cos", cos, 2, NULL, "[positions, rotary_dim / 2]")))
        return st;
    const int64_t want[2] = {cos->shape[0], cos->shape[1]};
    if ((st =
             mha__check_tensor(ctx, fn, "sin", sin, 2, want, "[positions, rotary_dim / 2] as cos")))
        return st;
    const int64_t D = x->shape[3], half = cos->shape[1], np = cos->shape[0];
    if (half < 1 || 2 * half > D)
        return mha__err(ctx, MHA_ERR_SHAPE,
                        "%s: cos.shape[1]: got %lld, expected 1 .. %lld (rotary_dim / 2, with "
                        "rotary_dim <= x's head dim %lld)",
                        fn, (long long)half, (long long)(D / 2), (long long)D);
    const int64_t B = x->shape[0], L = x->shape[2];
    if (x->shape[1] > 0)
        for (int64_t b = 0; b < B; b++)
            for (int64_t i = 0; i < L; i++) {
                const int64_t p = positions ? positions[b * L + i] : i;
                if (p < 0 || p >= np)
                    return mha__err(ctx, MHA_ERR_INVALID_ARG,
                                    "%s: %s[%lld][%lld]: got %lld, expected a position in [0, "
                                    "%lld) (cos's rows)",
                                    fn, positions ? "positions" : "token (positions NULL)",
                                    (long long)b, (long long)i, (long long)p, (long long)np);
            }
    if (mha__tensor_self_overlaps(x))
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: x: got a view whose elements share memory (a stride-0 dimension, as "
                        "from expand()?), expected distinct elements (it is written)",
                        fn);
    if (mha__tensors_overlap(x, cos) || mha__tensors_overlap(x, sin))
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: x overlaps %s (x is written in place)", fn,
                        mha__tensors_overlap(x, cos) ? "cos" : "sin");
    return MHA_OK;
}

mha_status mha_rotary(mha_ctx *ctx, mha_tensor *x, const mha_tensor *cos, const mha_tensor *sin,
                      const int32_t *positions, int interleaved) {
    static const char fn[] = "mha_rotary";
    mha__clear(ctx);
    mha_status st = rot_check(ctx, fn, x, cos, sin, positions);
    if (st) return st;
    const mha_dtype dt = x->dtype;
    const int64_t B = x->shape[0], H = x->shape[1], L = x->shape[2], half = cos->shape[1];
    const int64_t rows = B * H * L;
    const int nt = rows * half < (1 << 16) ? 1 : mha__ctx_threads(ctx);
    (void)nt;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t r = 0; r < rows; r++) {
        const int64_t b = r / (H * L), h = r / L % H, i = r % L;
        const int64_t p = positions ? positions[b * L + i] : i;
        void *row = mha__attn_row_at(x, b, h, i);
        const float *c = cos->data + p * cos->stride[0], *s = sin->data + p * sin->stride[0];
        for (int64_t k = 0; k < half; k++) {
            const int64_t i0 = interleaved ? 2 * k : k, i1 = interleaved ? 2 * k + 1 : k + half;
            const float x0 = mha__load_f32(dt, row, i0), x1 = mha__load_f32(dt, row, i1);
            const float ck = c[k * cos->stride[1]], sk = s[k * sin->stride[1]];
            mha__store_f32(dt, row, i0, x0 * ck - x1 * sk);
            mha__store_f32(dt, row, i1, x0 * sk + x1 * ck);
        }
    }
    return MHA_OK;
}
