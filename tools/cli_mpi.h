/* cli_mpi.h - the mha tool launched by mpirun (tools/cli_mpi.c): `mpirun -n P mha forward`,
 * `mha backward` and `mha bench --core` split the sequence over the P processes (ring attention,
 * include/mha_mpi.h) and give what one process gives.
 *
 * The tool is linked with MPI only when CMake found it (MHA_HAVE_MPI), and it starts MPI only
 * when mpirun launched it (OMPI_COMM_WORLD_SIZE, PMI_SIZE or PMIX_RANK in the environment):
 * plain `mha ...` never initializes MPI. Without MHA_HAVE_MPI the functions below that every
 * command calls are the one-process answers (rank 0 of 1, nothing to agree on) and
 * tools/cli_mpi.c is not compiled.
 *
 * Under mpirun every rank runs the same command. Only rank 0 writes files and prints to stdout
 * (the other ranks' stdout goes to /dev/null). Errors: each phase of a command (command line,
 * outputs, inputs, compute, write) ends in cli_mpi_agree, a collective, so that every rank
 * exits with the same code and one line is printed: rank 0's own message when rank 0 failed,
 * else the message of the lowest rank that failed, as "mha[rank 2]: error: ..." (what the other
 * ranks print to stderr is held back until then and dropped). */
#ifndef MHA_CLI_MPI_H
#define MHA_CLI_MPI_H

#include "cli.h"

/* mha bench --core under mpirun: one rank's ring measurements (mha_mpi_stats, mha_mpi.h)
 * summed over the timed calls of one direction. Plain data, declared with or without MPI. */
typedef struct {
    double compute_s, comm_wait_s, total_s, work, bytes_sent;
    int calls;
} cli_mpi_tally;

#ifdef MHA_HAVE_MPI
/* Starts MPI when mpirun launched the tool (else does nothing): MPI_Init_thread (funneled),
 * stdout of ranks > 0 to /dev/null, their stderr held for cli_mpi_agree. Returns 0, or 2 after
 * printing when MPI cannot start. Call once, before anything else of the command. */
int cli_mpi_begin(void);
/* Ends what cli_mpi_begin started (MPI_Finalize) and returns rc. */
int cli_mpi_end(int rc);
/* 1 between cli_mpi_begin and cli_mpi_end under mpirun (even for one rank), else 0. */
int cli_mpi_active(void);
/* This process's rank (0 without MPI) and the number of ranks (1 without MPI). */
int cli_mpi_rank(void);
int cli_mpi_size(void);
/* Collective over all ranks: rc is this rank's result of the phase (0 or an exit code).
 * Returns 0 when every rank succeeded, else the exit code of the lowest failing rank, on every
 * rank; that rank's held-back message is printed (by rank 0 directly, by another rank with its
 * "mha:" prefix turned into "mha[rank R]:"). Without MPI: returns rc. */
int cli_mpi_agree(int rc);

/* mha forward / backward: usage errors of the command line under mpirun (exit 1; 0 when not
 * under mpirun): the attention weights (--attn-out) and --attn-mask cannot be split over the
 * ranks. */
int cli_mpi_layer_check(const cli_layer_args *a, int want_weights);
/* cli_layer_forward over the ranks: every rank takes its shard of l's query (and key, value
 * and key padding mask), mha_mpi_module_forward computes, and the output shards are gathered
 * into *out on rank 0 (allocated there as cli_layer_forward does; other ranks: zeroed). With
 * fo.save_for_backward, cli_mpi_layer_backward may follow. Returns 0 or 2 after printing. */
int cli_mpi_layer_forward(cli_layer *l, mha_forward_opts fo, mha_array *out);
/* The backward of the last cli_mpi_layer_forward: every rank takes its shard of dout (the
 * output gradient, shaped as the output), mha_mpi_module_backward computes (and sums the
 * parameter gradients over the ranks: every rank holds them in l->module), and the input
 * gradients are gathered on rank 0 into *dquery (and *dkey, *dvalue for cross-attention),
 * allocated there with the inputs' shapes. Returns 0 or 2 after printing. */
int cli_mpi_layer_backward(cli_layer *l, const mha_array *dout, mha_array *dquery, mha_array *dkey,
                           mha_array *dvalue);

/* mha bench --core: the number of tokens this rank holds of a sequence of n (the layout of
 * mask: zigzag when causal); opt names the option in the message. Returns 0, or 2 after
 * printing (n does not split). */
int cli_mpi_shard_len(mha_ctx *ctx, const mha_mask *mask, int64_t n, const char *opt, int64_t *nr);
/* mha_mpi_attn_forward / _backward over all ranks (MPI_COMM_WORLD), their measurements added
 * to *t. */
mha_status cli_mpi_attn_forward(mha_ctx *ctx, const mha_attn_params *p, const mha_tensor *q,
                                const mha_tensor *k, const mha_tensor *v, const mha_mask *mask,
                                mha_tensor *out, mha_tensor *lse, cli_mpi_tally *t);
mha_status cli_mpi_attn_backward(mha_ctx *ctx, const mha_attn_params *p, const mha_tensor *q,
                                 const mha_tensor *k, const mha_tensor *v, const mha_mask *mask,
                                 const mha_tensor *out, const mha_tensor *lse,
                                 const mha_tensor *dout, mha_tensor *dq, mha_tensor *dk,
                                 mha_tensor *dv, cli_mpi_tally *t);
/* Collective: rank 0 prints every rank's tallies (t[0] forward, t[1] backward when backward),
 * per call, with its peak memory (getrusage's ru_maxrss) and the work balance max/mean: lines
 * of text, or with json the fragment ',"mpi":{...}' of the bench's JSON object. Returns 0, or
 * 2 on every rank after printing. */
int cli_mpi_bench_report(const cli_mpi_tally t[2], int backward, int causal, int json);
/* A barrier, and the largest x over the ranks: the bench starts every timed run on all ranks
 * together and takes the slowest rank's time. */
void cli_mpi_barrier(void);
double cli_mpi_max(double x);
/* Collective: 1 on every rank when every rank passed the same x, else 0 on every rank. */
int cli_mpi_same(double x);
#else
/* Without MPI: one process, rank 0 of 1, nothing to agree on or refuse. */
static inline int cli_mpi_begin(void) { return 0; }
static inline int cli_mpi_end(int rc) { return rc; }
static inline int cli_mpi_active(void) { return 0; }
static inline int cli_mpi_rank(void) { return 0; }
static inline int cli_mpi_size(void) { return 1; }
static inline int cli_mpi_agree(int rc) { return rc; }
static inline int cli_mpi_layer_check(const cli_layer_args *a, int want_weights) {
    (void)a, (void)want_weights;
    return 0;
}
static inline void cli_mpi_barrier(void) {}
static inline double cli_mpi_max(double x) { return x; }
static inline int cli_mpi_same(double x) {
    (void)x;
    return 1;
}
#endif

#endif
