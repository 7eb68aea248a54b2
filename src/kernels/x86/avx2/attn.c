/* attn.c - the AVX2 + FMA attention tile kernels (mha__attn_*_avx2): the x86 skeleton
 * (../attn_skel.h: the tile and panel loops, the register blocks) over the AVX2 mapping
 * (simd.h: 8-float vectors, 6 x 2-vector register blocks, vmaskmov edges). */
#include "simd.h"

#include "../attn_skel.h"
#include "../decode_skel.h"
