/* init.c - what the AVX512_BF16 kernels add to the AVX-512 table (kernels.c calls this only
 * where the CPU has AVX512_BF16). */
#include "../../kernels.h"

void mha__kernels_init_avx512bf16(mha_kernels *k) {
    k->attn_kpack_bf16 = mha__attn_kpack_bf16_avx512bf16;
    k->attn_vpack_bf16 = mha__attn_vpack_bf16_avx512bf16;
    k->attn_fwd_bf16 = mha__attn_fwd_bf16_avx512bf16;
    k->attn_bf16_pw = 64; /* the skeleton's PW: VL x NVMAX keys per panel */
    k->attn_bf16_name = "mha__attn_fwd_bf16_avx512bf16";
}
