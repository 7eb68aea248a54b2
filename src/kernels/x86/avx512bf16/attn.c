/* attn.c - the AVX512_BF16 attention kernels (mha__attn_*_bf16_avx512bf16): the bf16 parts of
 * the x86 skeleton (../attn_skel.h, SKEL_BF16) over the AVX-512 mapping and its bf16 pairs
 * (../avx512/simd.h: vdpbf16ps, vcvtne2ps2bf16). Only this folder is compiled with
 * -mavx512bf16; the table uses it only on CPUs that have it (kernels.c). */
#include "../avx512/simd.h"

#undef SIMD_ISA
#define SIMD_ISA avx512bf16
#define SKEL_BF16 1      /* the bf16 kernels ... */
#define SKEL_BF16_ONLY 1 /* ... and not the float32 ones again (../avx512/attn.c has them) */
#include "../attn_skel.h"
/* the decode kernel again, with a bf16 cache's scores by vdpbf16ps (mha__attn_decode_mask's qb):
 * the table's attn_decode where the CPU has AVX512_BF16 */
#define DEC_BF16_DOTS 1
#include "../decode_skel.h"
