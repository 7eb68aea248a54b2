/* gemm_pack.c - packing for the gemm micro-kernels (contract in kernels.h), plain C.
 *
 * X is a rows x k matrix with element (i, p) at X[i*rs + p*cs]; it becomes ceil(rows / r)
 * micro-panels of r x k, panel t at dst + t*r*k holding dst[p*r + i] = X[(t*r + i)*rs + p*cs],
 * zero past `rows`. Two layouts matter: rs == 1 (each p is a contiguous run of r values:
 * a copy) and cs == 1 (each i is a contiguous run of k values: a transpose). */
#include "../kernels.h"

#include <string.h>

void mha__gemm_pack_generic_f32(const float *X, int64_t rs, int64_t cs, int64_t rows, int64_t k,
                                int r, float *dst) {
    for (int64_t i0 = 0; i0 < rows; i0 += r) {
        int rr = rows - i0 < r ? (int)(rows - i0) : r;
        const float *x = X + i0 * rs;
        float *d = dst + i0 * k; /* (i0 / r) * r * k */
        if (rs == 1) {
            for (int64_t p = 0; p < k; p++) {
                memcpy(d + p * r, x + p * cs, sizeof(float) * (size_t)rr);
                for (int i = rr; i < r; i++) d[p * r + i] = 0.0f;
            }
        } else if (cs == 1) {
            /* Transpose in chunks of 8 columns so the r rows being read stay in cache. */
            for (int64_t p0 = 0; p0 < k; p0 += 8) {
                int pb = k - p0 < 8 ? (int)(k - p0) : 8;
                for (int i = 0; i < rr; i++) {
                    const float *xi = x + i * rs + p0;
                    for (int p = 0; p < pb; p++) d[(p0 + p) * r + i] = xi[p];
                }
                for (int i = rr; i < r; i++)
                    for (int p = 0; p < pb; p++) d[(p0 + p) * r + i] = 0.0f;
            }
        } else {
            for (int64_t p = 0; p < k; p++)
                for (int i = 0; i < r; i++) d[p * r + i] = i < rr ? x[i * rs + p * cs] : 0.0f;
        }
    }
}
