/* gemm_pack.c - packing for the gemm micro-kernels (contract in kernels.h), plain C; and the
 * bulk conversions between 2-byte floats and float32 (cvt_to_f32, cvt_from_f32).
 *
 * X is a rows x k matrix with element (i, p) at X[i*rs + p*cs]; it becomes ceil(rows / r)
 * micro-panels of r x k, panel t at dst + t*r*k holding dst[p*r + i] = X[(t*r + i)*rs + p*cs],
 * zero past `rows`. Two layouts matter: rs == 1 (each p is a contiguous run of r values:
 * a copy) and cs == 1 (each i is a contiguous run of k values: a transpose). The elements are
 * float32, or bfloat16 / half converted exactly to float32 on the way (gemm_pack_h): one loop
 * for every dtype, specialized per dtype by the compiler. */
#include "../cvt.h"
#include "../kernels.h"

#include <string.h>

/* always inlined: each dtype's caller gets its own loop (no per-element dtype test) */
#if defined(__GNUC__)
#define INL static inline __attribute__((always_inline))
#else
#define INL static inline
#endif

/* Element e of X as float32. */
INL float elem(const void *X, mha_dtype dt, int64_t e) {
    if (dt == MHA_DTYPE_F32) return ((const float *)X)[e];
    uint16_t h = ((const uint16_t *)X)[e];
    return dt == MHA_DTYPE_BF16 ? mha__bf16_to_f32(h) : mha__f16_to_f32(h);
}

INL void pack(const void *X, mha_dtype dt, int64_t rs, int64_t cs, int64_t rows, int64_t k, int r,
              float *dst) {
    for (int64_t i0 = 0; i0 < rows; i0 += r) {
        int rr = rows - i0 < r ? (int)(rows - i0) : r;
        int64_t x = i0 * rs;     /* element (i0, 0) */
        float *d = dst + i0 * k; /* (i0 / r) * r * k */
        if (rs == 1) {
            for (int64_t p = 0; p < k; p++) {
                if (dt == MHA_DTYPE_F32)
                    memcpy(d + p * r, (const float *)X + x + p * cs, sizeof(float) * (size_t)rr);
                else
                    for (int i = 0; i < rr; i++) d[p * r + i] = elem(X, dt, x + p * cs + i);
                for (int i = rr; i < r; i++) d[p * r + i] = 0.0f;
            }
        } else if (cs == 1) {
            /* Transpose in chunks of 8 columns so the r rows being read stay in cache. */
            for (int64_t p0 = 0; p0 < k; p0 += 8) {
                int pb = k - p0 < 8 ? (int)(k - p0) : 8;
                for (int i = 0; i < rr; i++) {
                    int64_t xi = x + i * rs + p0;
                    for (int p = 0; p < pb; p++) d[(p0 + p) * r + i] = elem(X, dt, xi + p);
                }
                for (int i = rr; i < r; i++)
                    for (int p = 0; p < pb; p++) d[(p0 + p) * r + i] = 0.0f;
            }
        } else {
            for (int64_t p = 0; p < k; p++)
                for (int i = 0; i < r; i++)
                    d[p * r + i] = i < rr ? elem(X, dt, x + i * rs + p * cs) : 0.0f;
        }
    }
}

void mha__gemm_pack_generic_f32(const float *X, int64_t rs, int64_t cs, int64_t rows, int64_t k,
                                int r, float *dst) {
    pack(X, MHA_DTYPE_F32, rs, cs, rows, k, r, dst);
}

void mha__gemm_pack_generic_h(const uint16_t *X, mha_dtype dt, int64_t rs, int64_t cs, int64_t rows,
                              int64_t k, int r, float *dst) {
    if (dt == MHA_DTYPE_BF16) pack(X, MHA_DTYPE_BF16, rs, cs, rows, k, r, dst);
    else pack(X, MHA_DTYPE_F16, rs, cs, rows, k, r, dst);
}

/* kernels.h: scale_f32 */
void mha__scale_f32_generic(int64_t n, float a, const float *x, float *y) {
    for (int64_t i = 0; i < n; i++) y[i] = a * x[i];
}

/* kernels.h: cvt_to_f32 / cvt_from_f32, cvt.h's definitions element by element */
void mha__cvt_to_f32_generic(mha_dtype dt, const uint16_t *src, float *dst, int64_t n) {
    if (dt == MHA_DTYPE_BF16)
        for (int64_t i = 0; i < n; i++) dst[i] = mha__bf16_to_f32(src[i]);
    else
        for (int64_t i = 0; i < n; i++) dst[i] = mha__f16_to_f32(src[i]);
}

void mha__cvt_from_f32_generic(mha_dtype dt, const float *src, uint16_t *dst, int64_t n) {
    if (dt == MHA_DTYPE_BF16)
        for (int64_t i = 0; i < n; i++) dst[i] = mha__f32_to_bf16(src[i]);
    else
        for (int64_t i = 0; i < n; i++) dst[i] = mha__f32_to_f16(src[i]);
}
