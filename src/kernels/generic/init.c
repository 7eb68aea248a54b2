/* init.c - the generic kernel table: complete, portable, the oracle for the SIMD paths. */
#include "../kernels.h"

void mha__kernels_init_generic(mha_kernels *k) {
    k->name = "generic";
    /* gemm: 4 x 16 register block; KC 256, MC 128 (A block 128 KiB), NC 4096 */
    k->gemm_mr = 4, k->gemm_nr = 16, k->gemm_kc = 256, k->gemm_mc = 128, k->gemm_nc = 4096;
    k->gemm_ukr = mha__gemm_generic_f32_4x16;
    k->gemm_ukr_name = "mha__gemm_generic_f32_4x16";
    k->gemm_pack = mha__gemm_pack_generic_f32;
    k->gemm_pack_name = "mha__gemm_pack_generic_f32";
    /* bf16 / f16: converted to float32 panels for the same micro-kernel; no pair kernel */
    k->gemm_pack_h = mha__gemm_pack_generic_h;
    k->gemm_pack_h_name = "mha__gemm_pack_generic_h";
    k->cvt_to_f32 = mha__cvt_to_f32_generic;
    k->cvt_from_f32 = mha__cvt_from_f32_generic;
    k->scale_f32 = mha__scale_f32_generic;
    k->gemm_bf16_ukr = NULL;
    k->gemm_bf16_pack = NULL;
    /* attention tiles: 16 query rows x 32 keys (small, so tests cross many tile edges) */
    k->attn_br = 16, k->attn_bc = 32;
    k->attn_scores = mha__attn_scores_generic;
    k->attn_scores_kp = mha__attn_scores_kp_generic;
    k->attn_probs = mha__attn_probs_generic;
    k->attn_pv = mha__attn_pv_generic;
    k->attn_ptv = mha__attn_ptv_generic;
    k->attn_dsoftmax = mha__attn_dsoftmax_generic;
    /* fused forward: the same 16 x 32 tiles */
    k->attn_fwd_br = 16, k->attn_fwd_bc = 32;
    k->attn_kpack = mha__attn_kpack_generic;
    k->attn_fwd = mha__attn_fwd_generic;
    k->attn_fwd_drop = mha__attn_fwd_drop_generic;
    k->attn_dropout = mha__attn_dropout_generic;
    k->attn_dropout_apply = mha__attn_dropout_apply_generic;
    k->attn_decode = mha__attn_decode_generic;
}
