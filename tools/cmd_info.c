/* cmd_info.c - `mha info`: the version, the CPU features, the kernel paths this machine can
 * run, the one chosen and why, the kernels of its table that run (forward, backward, gemm) with
 * their tile sizes, and the thread count.
 *
 *   mha info [--isa NAME] [--threads T]
 */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void print_help(FILE *f) {
    fputs(
        "usage: mha info [--isa NAME] [--threads T]\n\n"
        "Prints the version, the CPU features detected (CPUID and the OS-enabled register\n"
        "state), which kernel paths this machine supports, the path chosen and why, the\n"
        "kernels of that path that run (forward, backward, gemm) with their tile sizes, and\n"
        "the thread count.\n\n"
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
    cli_opt opts[] = {{"--isa", CLI_OPT_STRING, &isa, 0}, {"--threads", CLI_OPT_INT, &threads, 0}};
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
        printf(" %s (%s)", mha_isa_name((mha_isa)i),
               mha_isa_supported((mha_isa)i) ? "supported" : "not supported by this build/cpu/os");
    }
    printf("\n");

    mha_ctx *ctx;
    rc = cli_ctx_create(opts[1].seen ? &threads : NULL, isa, &ctx);
    if (rc) return rc;
    const char *env = getenv("MHA_ISA");
    char why[96];
    if (isa && strcmp(isa, "auto") != 0) snprintf(why, sizeof why, "forced by --isa %.40s", isa);
    else if (!isa && env && *env) snprintf(why, sizeof why, "forced by $MHA_ISA=%.40s", env);
    else {
        size_t w = (size_t)snprintf(why, sizeof why,
                                    "auto: the best path this build and cpu/os "
                                    "support");
        for (int i = MHA_ISA_AVX512; i > (int)mha_ctx_isa(ctx) && w < sizeof why; i--)
            w += (size_t)snprintf(why + w, sizeof why - w, "; %s is not", mha_isa_name(i));
    }
    printf("path: %s (%s)\n", mha_isa_name(mha_ctx_isa(ctx)), why);

    char desc[4096];
    mha_ctx_describe(ctx, desc, sizeof desc);
    fputs(desc, stdout);
    printf("threads: %d%s\n", mha_ctx_threads(ctx),
           opts[1].seen                ? " (--threads)"
           : getenv("OMP_NUM_THREADS") ? " ($OMP_NUM_THREADS)"
                                       : " (all cores)");
    mha_ctx_free(ctx);
    return CLI_EXIT_OK;
}
