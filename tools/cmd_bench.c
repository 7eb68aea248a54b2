/* cmd_bench.c - TEMPORARY: replaced by the real command. */
#include "cli.h"
#include <stdio.h>
int mha_cmd_bench(int argc, char **argv) { (void)argc; (void)argv; fprintf(stderr, "mha: error: bench is not built yet\n"); return 2; }
