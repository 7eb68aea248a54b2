/* cmd_demo.c - TEMPORARY: replaced by the real command. */
#include "cli.h"
#include <stdio.h>
int mha_cmd_demo(int argc, char **argv) { (void)argc; (void)argv; fprintf(stderr, "mha: error: demo is not built yet\n"); return 2; }
