/* cli.h - what the command files of the mha tool share. Only tools/ prints, exits or parses
 * argv. Exit codes: 0 success, 1 usage error, 2 runtime failure (one line on stderr:
 * "mha: error: ..."). */
#ifndef MHA_CLI_H
#define MHA_CLI_H

#include "mha.h"

/* One function per command: argv[0] is the command name ("forward", ...). */
int mha_cmd_forward(int argc, char **argv);
int mha_cmd_backward(int argc, char **argv);
int mha_cmd_info(int argc, char **argv);
int mha_cmd_bench(int argc, char **argv);
int mha_cmd_demo(int argc, char **argv);
int mha_cmd_viz(int argc, char **argv);

#endif
