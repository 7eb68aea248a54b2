/* cmd_info.c - `mha info`: the version, the CPU features, the kernel paths this machine can
 * run, the one chosen and why, the kernels of its table, and the thread count.
 *
 *   mha info [--isa NAME] [--threads T]
 *
 * A diagnostic: it reads the kernel table through the library's internal header (the one
 * place in tools/ that does), because kernel names are not part of the public API. */
#include "cli.h"
#include "../src/core/internal.h"
#include "../src/kernels/kernels.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void print_help(FILE *f) {
    fputs("usage: mha info [--isa NAME] [--threads T]\n\n"
          "Prints the version, the CPU features detected (CPUID and the OS-enabled register\n"
          "state), which kernel paths this machine supports, the path chosen and why, the\n"
          "kernels of that path and the thread count.\n\n"
          "options:\n"
          "  --isa NAME    show the path NAME (auto, generic, avx2, avx512) instead of the default\n"
          "  --threads T   show the thread count T would give (0 = all cores)\n"
          "  --help        this text\n\n"
          "environment:\n"
          "  MHA_ISA           forces a path for every context (an unsupported one is an error)\n"
          "  OMP_NUM_THREADS   the default thread count\n",
          f);
}

int mha_cmd_info(int argc, char **argv) {
    const char *isa = NULL;
    long long threads = 0;
    cli_opt opts[] = {{"--isa", CLI_OPT_STRING, &isa, 0},
                      {"--threads", CLI_OPT_INT, &threads, 0}};
    int rc = cli_parse(argc, argv, opts, 2);
    if (rc == CLI_HELP) {
        print_help(stdout);
        return CLI_EXIT_OK;
    }
    if (rc) return rc;

    printf("mha %s\n", MHA_VERSION_STRING);
    printf("cpu features: %s\n", mha_cpu_features());
    printf("paths:");
    for (int i = MHA_ISA_GENERIC; i <= MHA_ISA_AVX512; i++) {
        int built = mha__kernels_for((mha_isa)i) != NULL;
        printf(" %s (%s)", mha_isa_name((mha_isa)i),
               mha_isa_supported((mha_isa)i) ? "supported"
               : built ? "built, not supported by this cpu/os" : "not built");
    }
    printf("\n");

    mha_ctx *ctx;
    rc = cli_ctx_create(opts[1].seen ? &threads : NULL, isa, &ctx);
    if (rc) return rc;
    const char *env = getenv("MHA_ISA");
    char why[96];
    if (isa && strcmp(isa, "auto") != 0) snprintf(why, sizeof why, "forced by --isa %.40s", isa);
    else if (!isa && env && *env) snprintf(why, sizeof why, "forced by $MHA_ISA=%.40s", env);
    else snprintf(why, sizeof why, "auto: the best path this build and cpu support");
    printf("path: %s (%s)\n", mha_isa_name(mha_ctx_isa(ctx)), why);

    const mha_kernels *k = mha__ctx_kernels(ctx);
    printf("kernels (%s table):\n", k->name);
    printf("  sgemm (oracle)  %s\n", k->sgemm_name);
    printf("  gemm micro      %s  (MR %d x NR %d; blocks KC %d, MC %d, NC %d)\n",
           k->gemm_ukr_name, k->gemm_mr, k->gemm_nr, k->gemm_kc, k->gemm_mc, k->gemm_nc);
    printf("  gemm packing    %s\n", k->gemm_pack_name);
    /* Attention tile kernels carry no names: say whether each is the generic one. */
    const mha_kernels *g = mha__kernels_for(MHA_ISA_GENERIC);
    printf("  attention tiles BR %lld x BC %lld:", (long long)k->attn_br, (long long)k->attn_bc);
    const struct { const char *name; int generic; } at[] = {
        {"scores", k->attn_scores == g->attn_scores}, {"softmax", k->attn_softmax == g->attn_softmax},
        {"probs", k->attn_probs == g->attn_probs},    {"pv", k->attn_pv == g->attn_pv},
        {"ptv", k->attn_ptv == g->attn_ptv},          {"dsoftmax", k->attn_dsoftmax == g->attn_dsoftmax}};
    for (size_t i = 0; i < sizeof at / sizeof at[0]; i++)
        printf(" %s (%s)", at[i].name, at[i].generic ? "generic" : k->name);
    printf("\n");
    printf("threads: %d%s\n", mha_ctx_threads(ctx),
           opts[1].seen ? " (--threads)" : getenv("OMP_NUM_THREADS") ? " ($OMP_NUM_THREADS)"
                                                                     : " (all cores)");
    mha_ctx_free(ctx);
    return CLI_EXIT_OK;
}
