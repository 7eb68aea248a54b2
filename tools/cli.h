/* cli.h - what the command files of the mha tool share. Only tools/ prints, exits or parses
 * argv. Exit codes: 0 success, 1 usage error, 2 runtime failure (one line on stderr:
 * "mha: error: ..."). */
#ifndef MHA_CLI_H
#define MHA_CLI_H

#include "mha.h"

#include <stdio.h>

/* One function per command: argv[0] is the command name ("forward", ...). */
int mha_cmd_forward(int argc, char **argv);
int mha_cmd_backward(int argc, char **argv);
int mha_cmd_info(int argc, char **argv);
int mha_cmd_bench(int argc, char **argv);
int mha_cmd_demo(int argc, char **argv);
int mha_cmd_viz(int argc, char **argv);
int mha_cmd_explain(int argc, char **argv);

/* ---------------------------------------------------------------------------------------------
 * Shared helpers (tools/cli_common.c)
 *
 * Exit codes: CLI_EXIT_USAGE (1) for a command line that cannot be understood or contradicts
 * itself (unknown option, missing option or value, a number that does not parse, a --heads that
 * is not positive or does not fit the weights, a --prefix that picks no single layer of them,
 * two outputs naming one file), CLI_EXIT_RUNTIME
 * (2) for everything that fails while running (files, shapes, dtypes, values the library
 * refuses).
 * ------------------------------------------------------------------------------------------- */
#define CLI_EXIT_OK 0
#define CLI_EXIT_USAGE 1
#define CLI_EXIT_RUNTIME 2

#if defined(__GNUC__)
#define CLI_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define CLI_PRINTF(a, b)
#endif

/* Prints "mha: error: <fmt ...>" as one line on stderr (newlines in the text become spaces)
 * and returns CLI_EXIT_RUNTIME (2). */
int cli_fail(const char *fmt, ...) CLI_PRINTF(1, 2);
/* A usage error: "mha: error: <fmt ...>", then "hint: <hint>" when hint is not NULL; returns
 * CLI_EXIT_USAGE (1). */
int cli_usage_error(const char *hint, const char *fmt, ...) CLI_PRINTF(2, 3);
/* 1 if x > 0 stays a positive finite number as a float (what --scale and --softcap become): a
 * value below the smallest float would turn into 0 (for --scale: "the default"), one above
 * FLT_MAX into infinity. */
int cli_positive_float(double x);
/* A library failure: "mha: error: <what>: <mha_ctx_errmsg(ctx)>" (what may be NULL); returns 2. */
int cli_fail_lib(const mha_ctx *ctx, const char *what);
/* As cli_fail_lib, with the library's names of options replaced by the command line's:
 * names holds pairs {library name, option}, e.g. {"opts.cell_px", "--cell-px"}, ending with
 * a NULL library name; the message then names what the user typed. */
int cli_fail_lib_named(const mha_ctx *ctx, const char *what, const char *const (*names)[2]);

/* Formats a shape as "[2, 6]" into buf (always NUL-terminated); returns buf. */
char *cli_shape_str(char *buf, size_t cap, int ndim, const int64_t *shape);

/* --- option parsing ---------------------------------------------------------------------- */
typedef enum {
    CLI_OPT_FLAG,   /* no value; *(int *)dest = 1 */
    CLI_OPT_STRING, /* *(const char **)dest = the value */
    CLI_OPT_INT,    /* *(long long *)dest = the value, a whole decimal number */
    CLI_OPT_FLOAT   /* *(double *)dest = the value, a finite number */
} cli_opt_kind;

typedef struct {
    const char *name; /* with the dashes: "--heads" */
    cli_opt_kind kind;
    void *dest;
    int seen; /* set by cli_parse: how many times the option was given */
} cli_opt;

#define CLI_HELP (-1)
/* Parses argv[1..argc-1] (argv[0] is the command name) against opts. Accepts "--name value"
 * and "--name=value"; a later repetition overrides an earlier one. A value may start with one
 * dash ("-1") but not with two. Returns 0, CLI_HELP when --help or -h was given (nothing
 * printed), or CLI_EXIT_USAGE after printing the error and a hint naming "mha <cmd> --help". */
int cli_parse(int argc, char **argv, cli_opt *opts, int nopts);
/* The entry of opts named name (for ->seen), or NULL. */
const cli_opt *cli_find(const cli_opt *opts, int nopts, const char *name);
/* Usage error "<opt> is required" with a hint naming "mha <cmd> --help"; returns 1. */
int cli_missing(const char *cmd, const char *opt);

/* --- context, module and files ----------------------------------------------------------- */
/* Creates a context, then applies *threads when threads != NULL (0 = all cores) and isa when
 * isa != NULL ("auto", "generic", "avx2" or "avx512"; the caller has checked the name with
 * cli_isa_parse). On failure prints, frees the context and returns 2. */
int cli_ctx_create(const long long *threads, const char *isa, mha_ctx **out);
/* 1 and *out set if name is an ISA name ("auto", "generic", "avx2", "avx512"), else 0. */
int cli_isa_parse(const char *name, mha_isa *out);

/* Loads the attention layer prefix picks in a safetensors file (mha_st_layer: any layout; NULL
 * for a file of one layer) with heads heads (0: the number the file records). A --prefix that
 * picks no single layer (several layers and no --prefix: the message lists them), a --heads the
 * file contradicts, that does not divide E, or missing where the file does not record it is a
 * usage error (1); a file that cannot be loaded or holds no attention layer returns 2 (naming
 * --weights). The module computes in dt (f32, bf16 or f16: mha_config.dtype), its
 * parameters rounded to it once. */
int cli_load_module(mha_ctx *ctx, const char *path, const char *prefix, long long heads,
                    mha_dtype dt, mha_module **out);

/* --dtype's names: "f32", "bf16", "f16" into *out; 0 for another name. */
int cli_dtype_parse(const char *name, mha_dtype *out);
/* Replaces the array a by its values in dtype dt (float32, bf16 or f16: exact upwards, rounded
 * once downwards); nothing when a is already of dt. On failure a is unchanged. */
mha_status cli_array_to(mha_ctx *ctx, mha_array *a, mha_dtype dt);
/* Loads an .npy of float32 or float16 values (NumPy has no bfloat16) with 1 <= ndim, as an
 * array of dtype dt (float32, bf16 or f16); errors name opt ("--query: ..."). Prints and
 * returns 2 on failure; *out zeroed then. cli_load_f32: as float32. */
int cli_load_float(mha_ctx *ctx, const char *opt, const char *path, mha_dtype dt, mha_array *out);
int cli_load_f32(mha_ctx *ctx, const char *opt, const char *path, mha_array *out);
/* Loads a mask .npy: bool always; float32 or float16 (as float32) too when allow_float.
 * Prints and returns 2. */
int cli_load_mask(mha_ctx *ctx, const char *opt, const char *path, int allow_float, mha_array *out);

/* Outputs written all or nothing, through the library's mha_outputs (see mha.h for what is
 * guaranteed), with messages that name the option of each output. Declare every output with
 * cli_outputs_add before loading or computing anything, then write each, then commit. */
#define CLI_MAX_OUTPUTS 8
typedef struct {
    mha_outputs *o;
    const char *opt[CLI_MAX_OUTPUTS]; /* the option of each declared output */
} cli_outputs;
/* Declares path, given as opt (*index receives its number). A usage error (1) when it is the
 * same file as an earlier output; 2 when it cannot be an output (a directory, a device, a
 * missing directory). Creates s->o on first use. */
int cli_outputs_add(cli_outputs *s, const char *opt, const char *path, int *index);
/* Writes output index (an .npy array, a safetensors collection); prints and returns 2 on
 * failure. */
int cli_outputs_write_npy(mha_ctx *ctx, cli_outputs *s, int index, const mha_array *a);
int cli_outputs_write_st(mha_ctx *ctx, cli_outputs *s, int index, const mha_st *st);
/* Any other content: fn writes through the writer it is given (mha_outputs_write). */
int cli_outputs_write(mha_ctx *ctx, cli_outputs *s, int index, mha_output_fn fn, void *arg);
/* Replaces every destination, or none; prints and returns 2 on failure. */
int cli_outputs_commit(mha_ctx *ctx, cli_outputs *s);
/* Removes what was not committed and zeroes *s; a zeroed cli_outputs is fine. */
void cli_outputs_free(cli_outputs *s);

/* --- one layer call: the inputs mha forward, backward and viz share ------------------------ */
/* The values of the options every command that runs a layer takes: --weights, --prefix,
 * --heads, --query, --key, --value, --causal, --causal-bottom-right, --key-padding-mask,
 * --attn-mask, --scale, --threads and --isa. Strings are NULL and numbers 0 when not given;
 * the *_given fields tell an explicit 0 from an absent option. */
typedef struct {
    const char *weights, *query, *key, *value, *key_padding_mask, *attn_mask, *isa;
    const char *dtype_name; /* --dtype f32|bf16|f16 (NULL: f32), parsed into dtype */
    mha_dtype dtype;
    const char *prefix; /* --prefix: the layer in --weights (NULL: its one layer) */
    long long heads, threads;
    double scale;
    int causal, causal_bottom_right;
    int heads_given, threads_given, scale_given;
} cli_layer_args;

/* How many options a command may add to the layer's own in cli_layer_parse. */
#define CLI_LAYER_MAX_EXTRA 24

/* Parses argv (argv[0] is the command name) against the layer options (into *a, zeroed first)
 * plus the command's own, extra[0 .. nextra-1] (nextra <= CLI_LAYER_MAX_EXTRA; their ->seen
 * is set), then checks what the command line alone tells about the layer: --weights and
 * --query given, --heads (optional) positive, --key and --value together or neither, at most
 * one causal mask, a known --isa name. Returns 0; CLI_HELP when --help or -h was given
 * (nothing checked or printed); or CLI_EXIT_USAGE after printing. The command checks its own
 * options afterwards. */
int cli_layer_parse(int argc, char **argv, cli_layer_args *a, cli_opt *extra, int nextra);
/* cli_layer_parse for a command that has a layer of its own when none is given (mha explain's
 * built-in example): --weights and --query may be absent (a->weights, a->query NULL); every
 * other check is the same. */
int cli_layer_parse_optional(int argc, char **argv, cli_layer_args *a, cli_opt *extra, int nextra);

/* A layer call loaded and checked: the context (--threads and --isa applied), the module, the
 * inputs and the mask, and the sizes they agree on. Released by cli_layer_free. */
typedef struct {
    mha_ctx *ctx;
    mha_module *module;    /* of dtype */
    mha_dtype dtype;       /* --dtype: the module's, the inputs' and the results' before they
                              are written (as float32) */
    mha_array query;       /* dtype [B, L, E], or [L, E] unbatched */
    mha_array key, value;  /* dtype [B, S, kdim], [B, S, vdim] (no B unbatched); zeroed for
                           * self-attention */
    mha_array kpm, amask;  /* the mask files, zeroed when not given */
    mha_mask mask;         /* causal choice; points into kpm and amask */
    int batched;           /* query.ndim == 3 */
    int cross;             /* --key and --value were given */
    int64_t B, L, S, E, H; /* B = 1 unbatched; S = L for self-attention */
    float scale;           /* --scale; 0 = 1/sqrt(E/H) */
} cli_layer;

/* Loads and checks everything a (as cli_layer_parse left it) names, in this order: --scale,
 * the context, --weights with --prefix and --heads, --query, --key, --value,
 * --key-padding-mask, --attn-mask. Nothing is computed. Returns 0, or the exit code after
 * printing one line that names the option at fault (*l is released and zeroed then): 2, or 1
 * for a --prefix or --heads that does not fit the weights (cli_load_module). */
int cli_layer_load(const cli_layer_args *a, cli_layer *l);
/* Frees what cli_layer_load loaded and zeroes *l; a zeroed cli_layer is fine. */
void cli_layer_free(cli_layer *l);

/* The shape of the layer's output, [B, L, E] or unbatched [L, E], into shape; returns ndim. */
int cli_layer_out_shape(const cli_layer *l, int64_t shape[3]);
/* Allocates float32 attention weights: per head [B, H, L, S], else averaged [B, L, S] (no B
 * unbatched). On failure the library's message is in l->ctx. */
mha_status cli_layer_weights_alloc(const cli_layer *l, int per_head, mha_array *out);
/* Runs mha_module_forward with fo (its scale replaced by l->scale): allocates *out with
 * cli_layer_out_shape and writes into it, and into *weights when not NULL (allocated by
 * cli_layer_weights_alloc with per_head == !fo.average_weights). Returns 0, or 2 after
 * printing the library's message. */
int cli_layer_forward(cli_layer *l, mha_forward_opts fo, mha_array *out, mha_array *weights);

/* --- token labels (tools/cli_tokens.c) ---------------------------------------------------- */
/* Labels read from a text file, one token per line ("\r\n" accepted). */
typedef struct {
    char *text; /* the file, NUL-terminated, each line ending replaced by a NUL */
    char **tok; /* [n] pointers into text */
    int64_t n;
} cli_tokens;
/* Reads path (given as opt) into *t: a regular file of at most 64 MiB with exactly want lines
 * (one token per what, e.g. "query position"); a FIFO, a device, a directory or a larger file
 * is refused before anything is read. Prints and returns 2 on failure (*t zeroed). */
int cli_tokens_load(const char *opt, const char *path, int64_t want, const char *what,
                    cli_tokens *t);
/* Frees what cli_tokens_load read and zeroes *t; a zeroed cli_tokens is fine. */
void cli_tokens_free(cli_tokens *t);

/* --- terminal ------------------------------------------------------------------------------ */
/* Terminal width for stdout: requested if > 0, else $COLUMNS, else the terminal's, else 80;
 * clamped to [40, 100000]. */
int cli_term_width(long long requested);
/* 1 when stdout is a terminal that should get colour: a tty, $NO_COLOR unset or empty, and
 * $TERM not "dumb". */
int cli_term_color(void);

/* A monotonic clock in seconds (for progress and timings). */
double cli_now_s(void);
/* An mha_write_fn that writes to the FILE * user (e.g. stdout); nonzero on a short write. */
int cli_write_file(void *user, const void *data, size_t size);

/* An array (float32, bf16 or f16) viewed as a contiguous tensor of its dtype. */
mha_tensor cli_array_tensor(mha_array *a);
/* Copies a (possibly strided) tensor view of any float dtype into a newly allocated float32
 * array (exactly). */
mha_status cli_tensor_to_array(mha_ctx *ctx, const mha_tensor *t, mha_array *out);

#endif
