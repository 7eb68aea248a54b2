/* init.c - the AVX2 kernel table: the generic table, then what this folder overrides. */
#include "../../kernels.h"

void mha__kernels_init_avx2(mha_kernels *k) {
    mha__kernels_init_generic(k);
    k->name = "avx2";
    /* gemm: 6 x 16 register block; KC 256 (B micro-panel 16 KiB in L1), MC 144 (A block
     * 144 KiB in L2), NC 4096 */
    k->gemm_mr = 6, k->gemm_nr = 16, k->gemm_kc = 256, k->gemm_mc = 144, k->gemm_nc = 4096;
    k->gemm_ukr = mha__gemm_avx2_f32_6x16;
    k->gemm_ukr_name = "mha__gemm_avx2_f32_6x16";
    k->gemm_pack_h = mha__gemm_pack_avx2_h; /* f16 by F16C's vcvtph2ps, bf16 by a shift */
    k->gemm_pack_h_name = "mha__gemm_pack_avx2_h";
    k->cvt_to_f32 = mha__cvt_to_f32_avx2;
    k->cvt_from_f32 = mha__cvt_from_f32_avx2;
    k->scale_f32 = mha__scale_f32_avx2;
    /* attention tiles: 64 x 64 (score tile 16 KiB; the 16-key packed panel is 8 KiB) */
    k->attn_br = 64, k->attn_bc = 64;
    k->attn_scores = mha__attn_scores_avx2;
    k->attn_scores_kp = mha__attn_scores_kp_avx2;
    k->attn_probs = mha__attn_probs_avx2;
    k->attn_pv = mha__attn_pv_avx2;
    k->attn_ptv = mha__attn_ptv_avx2;
    k->attn_dsoftmax = mha__attn_dsoftmax_avx2;
    /* fused forward: 96 x 256 tiles (the kernel touches 6 rows of the tile at a time; fewer
     * accumulator reloads and per-tile steps: measured 76 vs 70 GFLOP/s for 64 x 64 on the
     * core forward, D = 64, 1 thread); attn_fwd_bc a multiple of the 16-key panel */
    k->attn_fwd_br = 96, k->attn_fwd_bc = 256;
    k->attn_kpack = mha__attn_kpack_avx2;
    k->attn_fwd = mha__attn_fwd_avx2;
    k->attn_fwd_drop = mha__attn_fwd_drop_avx2;
    k->attn_dropout = mha__attn_dropout_avx2;
    k->attn_dropout_apply = mha__attn_dropout_apply_avx2;
    k->attn_decode = mha__attn_decode_avx2; /* keys read in place, in memory order */
}
