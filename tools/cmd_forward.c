/* cmd_forward.c - TEMPORARY: replaced by the CLI implementation. */
#include "cli.h"
#include <stdio.h>
int mha_cmd_forward(int argc, char **argv) { (void)argc; (void)argv; fprintf(stderr, "mha: error: forward is not built yet\n"); return 2; }
int mha_cmd_backward(int argc, char **argv) { (void)argc; (void)argv; fprintf(stderr, "mha: error: backward is not built yet\n"); return 2; }
