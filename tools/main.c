/* main.c - the mha command-line tool: dispatches to one function per command. */
#include "cli.h"

#include <stdio.h>
#include <string.h>

static const struct {
    const char *name;
    int (*fn)(int, char **);
    const char *help;
} commands[] = {
    {"forward", mha_cmd_forward, "run a PyTorch-exported layer on .npy inputs"},
    {"backward", mha_cmd_backward, "gradients of a layer's inputs and parameters"},
    {"viz", mha_cmd_viz, "draw a layer's attention weights (terminal, svg, png, html)"},
    {"explain", mha_cmd_explain, "walk one attention computation step by step, then check it"},
    {"demo", mha_cmd_demo, "train a tiny model and show what its heads learned"},
    {"bench", mha_cmd_bench, "time the module or the attention core"},
    {"info", mha_cmd_info, "cpu features and the kernels chosen"},
};

static void usage(FILE *f) {
    fprintf(f,
            "mha %s - multi-head attention with PyTorch-exact results\n\n"
            "usage: mha <command> [options]    (mha <command> --help for its options)\n\n"
            "commands:\n",
            MHA_VERSION_STRING);
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-9s %s\n", commands[i].name, commands[i].help);
    fprintf(f, "\nexample:\n  mha forward --weights layer.safetensors --heads 8 --query x.npy "
               "--causal --out y.npy\n");
}

int main(int argc, char **argv) {
    if (argc < 2) { /* an error like any other: one line, and a hint */
        fputs(
            "mha: error: no command given (forward, backward, viz, explain, demo, bench or info)\n"
            "hint: mha --help lists the commands\n",
            stderr);
        return 1;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("mha %s\n", MHA_VERSION_STRING);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "mha: error: unknown command \"%s\"\nhint: mha --help lists the commands\n",
            argv[1]);
    return 1;
}
