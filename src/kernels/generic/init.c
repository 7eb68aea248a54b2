/* init.c - the generic kernel table: complete, portable, the oracle for the SIMD paths. */
#include "../kernels.h"

void mha__kernels_init_generic(mha_kernels *k) {
    k->name = "generic";
    k->sgemm = mha__sgemm_generic_f32;
    k->sgemm_name = "mha__sgemm_generic_f32";
}
