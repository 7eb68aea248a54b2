/* cmd_viz.c - TEMPORARY: replaced by the real command. */
#include "cli.h"
#include <stdio.h>
int mha_cmd_viz(int argc, char **argv) { (void)argc; (void)argv; fprintf(stderr, "mha: error: viz is not built yet\n"); return 2; }
