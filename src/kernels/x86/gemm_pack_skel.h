/* gemm_pack_skel.h - the SIMD gemm packing loop (kernels.h: gemm_pack, gemm_pack_h), written
 * once over an ISA's mapping (simd.h: VL, vf, vmask, mask_tail, vf_zero, vf_mstore,
 * vf_transpose) and its loader, which the including file defines first:
 *
 *   INL vf pack_load(const void *X, mha_dtype dt, int64_t e, int64_t n)
 *     the elements e .. e+n-1 of X (of dtype dt) as float32; lanes >= n (n may be <= 0) zero,
 *     their elements never read. bf16 / f16 widen exactly (the panels gemm_pack_h promises).
 *
 * The two layouts the projections use, any r:
 *   cs == 1 (rows of X contiguous along k, e.g. x·W^T's W and a row-major A): VL x VL blocks
 *     are loaded as rows, transposed in registers and stored as columns;
 *   rs == 1 (each p a contiguous run of r values): masked vector copies.
 * Other layouts are the caller's (the generic packing). Always inlined: a caller that passes a
 * constant dt gets a loop of its own. */
#ifndef MHA_GEMM_PACK_SKEL_H
#define MHA_GEMM_PACK_SKEL_H

#define PACK_PF 4 /* blocks of VL elements ahead (cs == 1) */

INL void pack_skel(const void *X, mha_dtype dt, int64_t rs, int64_t cs, int64_t rows, int64_t k,
                   int r, float *dst) {
    for (int64_t i0 = 0; i0 < rows; i0 += r) {
        int64_t rr = rows - i0 < r ? rows - i0 : r;
        int64_t x = i0 * rs; /* element (i0, 0) */
        float *d = dst + i0 * k;
        for (int s0 = 0; s0 < r; s0 += VL) { /* VL rows of the panel at a time */
            int64_t nrow = rr - s0;
            vmask wmask = mask_tail(r - s0);
            if (cs == 1 && rs != 1) {
                for (int64_t p0 = 0; p0 < k; p0 += VL) {
                    int64_t pb = k - p0 < VL ? k - p0 : VL;
                    vf v[VL];
                    /* unrolled, v stays in registers (a loop left it on the stack: the gemm
                     * 1.0-1.09); each row's line PACK_PF blocks on is asked for: VL rows are VL
                     * streams, more than the hardware prefetchers follow (+1-3% more) */
#pragma GCC unroll 16
                    for (int i = 0; i < VL; i++) {
                        const int64_t e = x + (s0 + i) * rs + p0;
                        if (i < nrow && p0 + PACK_PF * VL < k)
                            __builtin_prefetch((const char *)X +
                                               (e + PACK_PF * VL) * (dt == MHA_DTYPE_F32 ? 4 : 2));
                        v[i] = i < nrow ? pack_load(X, dt, e, pb) : vf_zero();
                    }
                    vf_transpose(v);
#pragma GCC unroll 16
                    for (int p = 0; p < VL; p++)
                        if (p < pb) vf_mstore(d + (p0 + p) * r + s0, wmask, v[p]);
                }
            } else { /* rs == 1: a run of nrow values per p, zero up to r */
                for (int64_t p = 0; p < k; p++)
                    vf_mstore(d + p * r + s0, wmask, pack_load(X, dt, x + p * cs + s0, nrow));
            }
        }
    }
}

#endif
