/* init.c - what the AVX512_BF16 kernels add to the AVX-512 table (kernels.c calls this only
 * where the CPU has AVX512_BF16). */
#include "../../kernels.h"

void mha__kernels_init_avx512bf16(mha_kernels *k) {
    k->attn_kpack_bf16 = mha__attn_kpack_bf16_avx512bf16;
    k->attn_vpack_bf16 = mha__attn_vpack_bf16_avx512bf16;
    k->attn_fwd_bf16 = mha__attn_fwd_bf16_avx512bf16;
    k->attn_bf16_pw = 64; /* the skeleton's PW: VL x NVMAX keys per panel */
    k->attn_scores_bf16 = mha__attn_scores_bf16_avx512bf16;
    k->attn_probs_bf16 = mha__attn_probs_bf16_avx512bf16;
    k->attn_pairs_bf16 = mha__attn_pairs_bf16_avx512bf16;
    k->attn_tpairs_bf16 = mha__attn_tpairs_bf16_avx512bf16;
    k->attn_pv_bf16 = mha__attn_pv_bf16_avx512bf16;
    k->attn_ptv_bf16 = mha__attn_ptv_bf16_avx512bf16;
    k->attn_bf16_name = "mha__attn_fwd_bf16_avx512bf16";
    /* decoding: a bf16 cache's scores by vdpbf16ps, the rest as the AVX-512 kernel */
    k->attn_decode = mha__attn_decode_avx512bf16;
    /* the gemm's bf16 pair micro-kernel (gemm.c), 14 x 32 as the fp32 kernel (28
     * accumulators); KC 512 elements = 256 pairs: the B
     * micro-panel is 32 KiB in L1 as the fp32 kernel's at KC 256, the A block (MC 336) 336
     * KiB in L2, the B block (NC 4096) 4 MiB in L3. M = N = K = 1024, 1 thread, by its CPU
     * time on a busy machine: 175-185 GFLOP/s (fp32 kernel: 88-90), KC 256: 145-165 */
    k->gemm_bf16_mr = 14, k->gemm_bf16_nr = 32;
    k->gemm_bf16_kc = 512, k->gemm_bf16_mc = 336, k->gemm_bf16_nc = 4096;
    k->gemm_bf16_ukr = mha__gemm_avx512bf16_bf16_14x32;
    k->gemm_bf16_ukr_name = "mha__gemm_avx512bf16_bf16_14x32";
    k->gemm_bf16_pack = mha__gemm_pack_avx512bf16_bf16;
    k->gemm_bf16_pack_name = "mha__gemm_pack_avx512bf16_bf16";
}
