/* test_dispatch.c - the kernel tables as the drivers see them: every table complete (the fused
 * forward is the forward's only path, so no entry may be missing), the best-ISA choice. */
#include "harness.h"
#include "core/internal.h"
#include "kernels/kernels.h"

/* Every built and runnable table has every entry the drivers call, and tile sizes they can
 * use: a missing entry would be a NULL call, not a fallback. */
TEST(tables_complete) {
    int n = 0;
    for (int isa = MHA_ISA_GENERIC; isa <= MHA_ISA_AVX512; isa++) {
        const mha_kernels *k = mha__kernels_for((mha_isa)isa);
        ASSERT_EQ(k != NULL, mha_isa_supported((mha_isa)isa));
        if (!k) continue;
        n++;
        ASSERT_STR_CONTAINS(k->name, mha_isa_name((mha_isa)isa));
        ASSERT_TRUE(k->gemm_ukr && k->gemm_pack && k->gemm_ukr_name && k->gemm_pack_name);
        ASSERT_TRUE(k->gemm_mr > 0 && k->gemm_nr > 0 && k->gemm_kc > 0);
        ASSERT_TRUE(k->gemm_mc % k->gemm_mr == 0 && k->gemm_nc % k->gemm_nr == 0);
        ASSERT_TRUE(k->attn_scores && k->attn_probs && k->attn_pv && k->attn_ptv);
        ASSERT_TRUE(k->attn_dsoftmax && k->attn_dropout && k->attn_dropout_apply);
        ASSERT_TRUE(k->attn_kpack && k->attn_fwd && k->attn_fwd_drop);
        ASSERT_TRUE(k->attn_br > 0 && k->attn_bc > 0 && k->attn_fwd_br > 0 && k->attn_fwd_bc > 0);
    }
    ASSERT_TRUE(n >= 1);
}

/* auto picks the best table that exists: avx512, then avx2, then generic. */
TEST(best_isa) {
    mha_isa want = mha_isa_supported(MHA_ISA_AVX512) ? MHA_ISA_AVX512
                   : mha_isa_supported(MHA_ISA_AVX2) ? MHA_ISA_AVX2
                                                     : MHA_ISA_GENERIC;
    ASSERT_EQ(mha__best_isa(), want);
    ASSERT_TRUE(mha__kernels_for(want) != NULL);
    ASSERT_TRUE(mha__kernels_for(MHA_ISA_AUTO) == NULL);
    for (int isa = MHA_ISA_AVX2; isa <= MHA_ISA_AVX512; isa++)
        if (mha_isa_supported((mha_isa)isa)) ASSERT_TRUE(mha__cpu_supports((mha_isa)isa));
}

int main(void) {
    RUN(tables_complete);
    RUN(best_isa);
    return harness_report();
}
