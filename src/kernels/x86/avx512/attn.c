/* attn.c - the AVX-512 attention tile kernels (mha__attn_*_avx512): the x86 skeleton
 * (../attn_skel.h: the tile and panel loops, the register blocks) over the AVX-512 mapping
 * (simd.h: 16-float vectors, 6 x 4-vector register blocks, mask-register edges). */
#include "simd.h"

#include "../attn_skel.h"
#include "../decode_skel.h"
