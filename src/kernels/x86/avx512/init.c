/* init.c - the AVX-512 kernel table: the generic table, then what this folder overrides. */
#include "../../kernels.h"

void mha__kernels_init_avx512(mha_kernels *k) {
    mha__kernels_init_generic(k);
    k->name = "avx512";
    /* gemm: 14 x 32 register block; KC 512 (B micro-panel 64 KiB and A block 672 KiB, MC 336,
     * in L2; half the passes over C and half the micro-kernel calls of KC 256, and the E = 512
     * projections in one pass: 2-5% faster on one thread, side by side with OpenBLAS), NC 4096
     * (B block 8 MiB in L3) */
    k->gemm_mr = 14, k->gemm_nr = 32, k->gemm_kc = 512, k->gemm_mc = 336, k->gemm_nc = 4096;
    k->gemm_ukr = mha__gemm_avx512_f32_14x32;
    k->gemm_ukr_name = "mha__gemm_avx512_f32_14x32";
    /* attention tiles: 64 x 128 (score tile 32 KiB; 64 rows amortize transposing the key
     * tile per call, 128 keys the per-row softmax work; measured 171 vs 157 GFLOP/s for
     * 64 x 64 on the core forward, D = 64, 2 threads) */
    k->attn_br = 64, k->attn_bc = 128;
    k->attn_scores = mha__attn_scores_avx512;
    k->attn_scores_kp = mha__attn_scores_kp_avx512;
    k->attn_probs = mha__attn_probs_avx512;
    k->attn_pv = mha__attn_pv_avx512;
    k->attn_ptv = mha__attn_ptv_avx512;
    k->attn_dsoftmax = mha__attn_dsoftmax_avx512;
    /* fused forward: 96 x 256 tiles (the kernel touches 6 rows of the tile at a time, so the
     * tile may outgrow L1; fewer accumulator reloads and per-tile steps: measured 97 vs 93
     * GFLOP/s for 64 x 128 on the core forward, D = 64, 1 thread); attn_fwd_bc a multiple of
     * the 64-key panel */
    k->attn_fwd_br = 96, k->attn_fwd_bc = 256;
    k->attn_kpack = mha__attn_kpack_avx512;
    k->attn_fwd = mha__attn_fwd_avx512;
    k->attn_fwd_drop = mha__attn_fwd_drop_avx512;
    k->attn_dropout = mha__attn_dropout_avx512;
    k->attn_dropout_apply = mha__attn_dropout_apply_avx512;
    k->attn_decode = mha__attn_decode_avx512; /* keys read in place, in memory order */
    k->gemm_pack = mha__gemm_pack_avx512_f32;
    k->gemm_pack_name = "mha__gemm_pack_avx512_f32";
    k->gemm_pack_h = mha__gemm_pack_avx512_h; /* bf16 by a shift, f16 by vcvtph2ps */
    k->gemm_pack_h_name = "mha__gemm_pack_avx512_h";
    k->cvt_to_f32 = mha__cvt_to_f32_avx512;
    k->cvt_from_f32 = mha__cvt_from_f32_avx512;
    k->scale_f32 = mha__scale_f32_avx512;
}
