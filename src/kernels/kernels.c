/* kernels.c - builds the kernel tables once, and answers which paths exist here (a table is
 * built for a path only when it was compiled in and the CPU and OS can run it). */
#include "kernels.h"
#include "core/internal.h"

#include <pthread.h>

static pthread_once_t once = PTHREAD_ONCE_INIT;
static mha_kernels generic_table;
#ifdef MHA_HAVE_AVX2
static mha_kernels avx2_table;
#endif
#ifdef MHA_HAVE_AVX512
static mha_kernels avx512_table;
#endif

static int avx2_ok, avx512_ok;

/* A table is built only when the CPU and OS can run its ISA: even its init function is
 * compiled with the ISA's flags, and the compiler may use those instructions there (a SIGILL
 * at the first context on an older CPU otherwise). */
static void init_tables(void) {
    mha__kernels_init_generic(&generic_table);
#ifdef MHA_HAVE_AVX2
    if ((avx2_ok = mha__cpu_supports(MHA_ISA_AVX2))) mha__kernels_init_avx2(&avx2_table);
#endif
#ifdef MHA_HAVE_AVX512
    if ((avx512_ok = mha__cpu_supports(MHA_ISA_AVX512))) mha__kernels_init_avx512(&avx512_table);
#endif
#ifdef MHA_HAVE_AVX512BF16
    if (avx512_ok && mha__cpu_avx512bf16()) mha__kernels_init_avx512bf16(&avx512_table);
#endif
}

const mha_kernels *mha__kernels_for(mha_isa isa) {
    pthread_once(&once, init_tables);
    switch (isa) {
    case MHA_ISA_GENERIC: return &generic_table;
#ifdef MHA_HAVE_AVX2
    case MHA_ISA_AVX2: return avx2_ok ? &avx2_table : NULL;
#endif
#ifdef MHA_HAVE_AVX512
    case MHA_ISA_AVX512: return avx512_ok ? &avx512_table : NULL;
#endif
    default: return NULL;
    }
}

/* Built into this library and runnable here: the table exists only then. */
int mha_isa_supported(mha_isa isa) {
    if (isa == MHA_ISA_AUTO) return 1;
    return (isa == MHA_ISA_GENERIC || isa == MHA_ISA_AVX2 || isa == MHA_ISA_AVX512) &&
           mha__kernels_for(isa) != NULL;
}

mha_isa mha__best_isa(void) {
    if (mha_isa_supported(MHA_ISA_AVX512)) return MHA_ISA_AVX512;
    if (mha_isa_supported(MHA_ISA_AVX2)) return MHA_ISA_AVX2;
    return MHA_ISA_GENERIC;
}
