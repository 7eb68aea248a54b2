/* cmd_info.c - TEMPORARY: replaced by the real command. */
#include "cli.h"
#include <stdio.h>
int mha_cmd_info(int argc, char **argv) { (void)argc; (void)argv; fprintf(stderr, "mha: error: info is not built yet\n"); return 2; }
