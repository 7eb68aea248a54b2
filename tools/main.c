/* main.c - the mha command-line tool: dispatches to one function per command. */
#include "cli.h"

#include <signal.h>
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

/* What a command printed to stdout, flushed: a failed write (a full disk, a closed pipe's
 * EPIPE) is a runtime error, never a silent success. */
static int finish(int rc) {
    if (fflush(stdout) != 0 || ferror(stdout))
        return rc ? rc : cli_fail("writing to stdout failed");
    return rc;
}

static int run(int argc, char **argv) {
    if (argc < 2) { /* an error like any other: one line, and a hint */
        fputs(
            "mha: error: no command given (forward, backward, viz, explain, demo, bench or info)\n"
            "hint: mha --help lists the commands\n",
            stderr);
        return 1;
    }
    if (!strcmp(argv[1], "help") && argc > 2) /* mha help forward: mha forward --help */
        for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
            if (!strcmp(argv[2], commands[i].name)) {
                char *args[] = {argv[2], "--help", NULL};
                return commands[i].fn(2, args);
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
    return cli_usage_error("mha --help lists the commands", "unknown command \"%s\"", argv[1]);
}

int main(int argc, char **argv) {
    /* a file over the size limit (ulimit -f) is a write error to report, with the temporaries
     * removed, not a signal that kills the process */
    signal(SIGXFSZ, SIG_IGN);
    return finish(run(argc, argv));
}
