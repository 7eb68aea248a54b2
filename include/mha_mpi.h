/* mha_mpi.h - context-parallel (ring) attention over MPI: one sequence split across processes.
 *
 * OVERVIEW
 *   A sequence too long for one process (its keys and values do not fit, or its attention
 *   takes too long) is split along the sequence: each rank of an MPI communicator holds a
 *   shard of the tokens, and the calls below compute, on every rank, that rank's rows of what
 *   mha_attn_forward / mha_attn_backward / mha_module_forward / mha_module_backward (mha.h)
 *   give on the whole sequence in one process (the same numbers up to float rounding: within
 *   1e-5 relative to each element or to the tensor's largest on the tests' inputs, for 1 to 4
 *   ranks; where a gradient cancels, with large scores or long rows, the two differ by as much
 *   as the one-process library's own float32 error, which can be more).
 *
 *   The algorithm is ring attention (Liu et al., 2023). Each rank keeps its query rows; the
 *   key/value blocks travel around the ring (rank r sends to r + 1 and receives from r - 1,
 *   MPI_Isend / MPI_Irecv, double-buffered: the next exchange is posted before the current
 *   block is computed on, so communication overlaps compute). Every step runs the attention
 *   core on the block at hand and merges its partial output into the rank's running result by
 *   log-sum-exp, in float32:
 *       lse = log(exp(lse_a) + exp(lse_b)),  out = out_a exp(lse_a - lse) + out_b exp(lse_b - lse)
 *   (a row masked so far, lse = -inf, takes the other side as it is: a fully masked row ends
 *   0, never NaN). The backward (FlashAttention-2 style) recomputes from the final lse: the
 *   key/value blocks travel the ring again with their dk / dv accumulators (float32), which
 *   arrive back at their owner after the last step; dq is accumulated locally. Results do not
 *   depend on timing: every sum runs in a fixed order.
 *
 * LAYOUTS (mha_mpi_shard says which tokens a rank holds)
 *   MHA_MPI_CONTIGUOUS  rank r holds tokens [r n / P, (r + 1) n / P) (n % P == 0). Used
 *                       without a causal mask.
 *   MHA_MPI_ZIGZAG      the sequence cut into 2P chunks of c = n / (2P) tokens; rank r holds
 *                       chunks r and 2P - 1 - r, in that order (n % 2P == 0). Used with a
 *                       causal mask: every rank then has the same number of unmasked (query
 *                       chunk, key chunk) pairs, so the work is balanced. A query chunk a
 *                       against a key chunk b is computed in full (a > b), causally (a == b)
 *                       or skipped (a < b).
 *
 * USAGE (every rank; each passes its own shard)
 *     MPI_Init(&argc, &argv);
 *     int rank, P;
 *     MPI_Comm_rank(MPI_COMM_WORLD, &rank);
 *     MPI_Comm_size(MPI_COMM_WORLD, &P);
 *     mha_mask mask = mha_mask_default();
 *     mask.causal = MHA_CAUSAL_TOP_LEFT;
 *     int64_t start[2], len[2];                            // which tokens are mine
 *     mha_mpi_shard(ctx, mha_mpi_layout_for(&mask), N, rank, P, start, len);
 *     // q [B, H, len[0] + len[1], D]: rows start[0].. then start[1].. of the whole q; k, v too
 *     mha_mpi_attn_forward(ctx, MPI_COMM_WORLD, NULL, &q, &k, &v, &mask, &out, &lse, NULL);
 *     ...
 *     MPI_Finalize();
 *
 * AGREEMENT AND ERRORS
 *   Every call is collective over comm: every rank must make it. Before any work the ranks
 *   agree on the shapes and options (all must be the same, but for each rank's own shard) and
 *   on each rank's validation and allocations; if any rank finds a problem, EVERY rank returns
 *   an error (never a hang) with a message naming the argument and the ranks, e.g.
 *   "mha_mpi_attn_forward: k.shape[2]: got 64 on rank 1, expected 32 as on rank 0 (3 of 4
 *   ranks)" on every rank (the value most ranks give is the expected one, rank 0's on a tie);
 *   or, when rank 2 passes a NULL q, "mha_mpi_attn_forward: q: got NULL, expected a
 *   tensor" there and "mha_mpi_attn_forward: rank 2 failed: q: got NULL, expected a tensor" on
 *   the others (a rank that fails reports its own error; the others the lowest failing rank's,
 *   with its status). A failure during the ring (an allocation in the core) does not stop the
 *   ring's messages; it is agreed on after the ring. An MPI failure (a dead peer) is returned as
 *   MHA_ERR_IO where MPI returns at all (MPI_ERRORS_RETURN is set on a private duplicate of
 *   comm; the caller's comm is not changed). Ranks that make different calls of this header at
 *   the same time all return MHA_ERR_INVALID_ARG ("rank 1 called mha_mpi_attn_backward, expected
 *   mha_mpi_attn_forward as rank 0"); a rank that makes no call at all, or passes another
 *   communicator, cannot be detected: the others wait. Checked first, without communicating:
 *   MPI initialized and not finalized (else MHA_ERR_STATE), comm an intracommunicator
 *   (MPI_COMM_NULL or an intercommunicator: MHA_ERR_INVALID_ARG "comm: got ...").
 *
 * MEMORY per rank: O(N / P), never the whole sequence: two key/value blocks of the ring
 *   ((D + Dv) B Hkv N / P floats each), the float32 running output and lse, the partial result
 *   of one (query chunk, key chunk) pair at a time, the core's workspace; in the backward also
 *   two travelling dk / dv accumulators and the step's contribution (a block's size each), dq
 *   and the core's gradients of one pair.
 *
 * DTYPES: float32 only (another dtype is MHA_ERR_UNSUPPORTED naming the tensor).
 *
 * THREAD SAFETY: as the core's calls, and the MPI library's: only the calling thread makes MPI
 *   calls (the context's other threads compute), which MPI_THREAD_FUNNELED allows; calls from
 *   several threads at once need MPI_THREAD_MULTIPLE and distinct communicators.
 *
 * LINKING: libmha_mpi.a holds only these calls (link it with libmha.a and MPI);
 *   libmha_mpi.so is libmha.so plus these calls (link it instead of libmha.so):
 *   cc app.c $(pkg-config --cflags --libs mha_mpi). libmha itself never depends on MPI. Built
 *   when CMake finds MPI (Open MPI: libopenmpi-dev).
 */
#ifndef MHA_MPI_H
#define MHA_MPI_H

#include <mpi.h>

#include "mha.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    MHA_MPI_CONTIGUOUS = 0,
    MHA_MPI_ZIGZAG = 1
} mha_mpi_layout;

/* The layout every call below uses for mask: MHA_MPI_ZIGZAG when mask->causal is set,
 * MHA_MPI_CONTIGUOUS otherwise (mask NULL: no mask). */
MHA_API mha_mpi_layout mha_mpi_layout_for(const mha_mask *mask);

/* The global token positions rank `rank` of `nranks` holds of a sequence of n tokens, as at
 * most two runs: [start[0], start[0] + len[0]) then [start[1], start[1] + len[1]) (len[1] = 0
 * for MHA_MPI_CONTIGUOUS). A rank's shard is the first run followed by the second.
 * Contiguous: n % nranks == 0; zigzag: n % (2 nranks) == 0; otherwise MHA_ERR_SHAPE, e.g.
 * "mha_mpi_shard: n: got 10, expected a multiple of 8 (2 x 4 ranks, zigzag)". n >= 0,
 * nranks >= 1, 0 <= rank < nranks, start and len not NULL: else MHA_ERR_INVALID_ARG. Needs
 * no MPI call (usable before MPI_Init). */
MHA_API mha_status mha_mpi_shard(mha_ctx *ctx, mha_mpi_layout layout, int64_t n, int rank,
                                 int nranks, int64_t start[2], int64_t len[2]);

/* Optional measurements of one call on this rank (a NULL stats pointer: none are taken). */
typedef struct {
    double compute_s;   /* seconds in the attention kernels (and the merges) */
    double comm_wait_s; /* seconds waiting for the ring's messages: communication not hidden by
                           compute */
    double total_s;     /* the whole call, agreement included */
    double work;        /* multiply-adds of the attention this rank computed: per computed
                           (query chunk, key chunk) pair B H rows x keys x (D + Dv) (half for a
                           causal diagonal pair); skipped pairs count 0. Backward: 2x that
                           (recompute of the scores, then dv, dp, dq, dk) */
    int64_t bytes_sent; /* bytes this rank sent around the ring */
    int steps;          /* ring steps: P (the block held at the start, then P - 1 received) */
} mha_mpi_stats;

/* Forward of the attention core (mha_attn_forward) over the ranks of comm, each passing its
 * shard (the layout of mha_mpi_layout_for(mask)):
 *   q: [B, H, Lr, D]  k: [B, Hkv, Sr, D]  v: [B, Hkv, Sr, Dv]   (strided views, read only)
 *       Lr = L / P and Sr = S / P on every rank, for the whole lengths L and S. Causal (either
 *       alignment: the same for L == S) needs L == S (self-attention-shaped sharding) and the
 *       zigzag split (L % 2P == 0); without it, cross-attention L != S works (L % P == 0 and
 *       S % P == 0). GQA: Hkv divides H, as in mha_attn_forward.
 *   p: scale, dropout (p->dropout_p, seed, offset: the dropout mask is the one mha_attn_forward
 *       draws for the whole sequence, keyed by global positions), softcap; NULL: defaults
 *   mask: NULL, or causal and key_padding [B, Sr] (contiguous: this rank's keys, nonzero =
 *       ignore); key_lengths, attn_bool, attn_float, window and ALiBi: MHA_ERR_UNSUPPORTED
 *       (not split across ranks yet)
 *   out: [B, H, Lr, Dv] overwritten: this rank's rows of the whole sequence's output
 *   lse: [B, H, Lr] overwritten, optional (NULL): their log-sum-exp (-INFINITY for a fully
 *       masked row, whose out is 0), as mha_attn_forward's; mha_mpi_attn_backward needs it
 * Aliasing as in mha_attn_forward. Every rank must pass the same B, H, Hkv, D, Dv, Lr, Sr,
 * p, causal and the same presence of key_padding and lse (MHA_ERR_SHAPE / MHA_ERR_INVALID_ARG
 * on every rank, naming the argument and the ranks that differ). */
MHA_API mha_status mha_mpi_attn_forward(mha_ctx *ctx, MPI_Comm comm, const mha_attn_params *p,
                                        const mha_tensor *q, const mha_tensor *k,
                                        const mha_tensor *v, const mha_mask *mask, mha_tensor *out,
                                        mha_tensor *lse, mha_mpi_stats *stats);

/* Backward of mha_mpi_attn_forward (with the same comm, p and mask; each rank its shard):
 *   out, lse: what the forward gave this rank (lse required); dout: [B, H, Lr, Dv]
 *   dq: [B, H, Lr, D], dk: [B, Hkv, Sr, D], dv: [B, Hkv, Sr, Dv]: overwritten with this rank's
 *   rows of mha_attn_backward's gradients on the whole sequence (dk, dv summed over the ranks
 *   whose queries read them, in a fixed order). Aliasing as in mha_attn_backward. */
MHA_API mha_status mha_mpi_attn_backward(mha_ctx *ctx, MPI_Comm comm, const mha_attn_params *p,
                                         const mha_tensor *q, const mha_tensor *k,
                                         const mha_tensor *v, const mha_mask *mask,
                                         const mha_tensor *out, const mha_tensor *lse,
                                         const mha_tensor *dout, mha_tensor *dq, mha_tensor *dk,
                                         mha_tensor *dv, mha_mpi_stats *stats);

/* The module's forward (mha_module_forward) with the sequence sharded: every rank holds the
 * same float32 module (the same parameters: not checked, only the configuration is) and passes
 * its shard:
 *   query: [B, Lr, E] (batched only); key [B, Sr, kdim], value [B, Sr, vdim], or both NULL
 *          for self-attention; out: [B, Lr, E] overwritten
 *   mask: as mha_mpi_attn_forward's (key_padding [B, Sr]: this rank's keys)
 * The projections are local; the attention core is the ring above. opts as in
 * mha_module_forward, but weights (attention probabilities) are not available. Aliasing as in
 * mha_module_forward (out against the inputs and the module's parameters; the backward's input
 * gradients against the parameters and their gradients too). A training forward with dropout
 * draws the mask the one-process forward draws, from the module's dropout stream, and advances
 * it (every rank's module the same way). With opts->save_for_backward
 * the activations of this rank's shard are kept for mha_mpi_module_backward (they do not
 * affect mha_module_backward, which still differentiates the most recent mha_module_forward). */
MHA_API mha_status mha_mpi_module_forward(mha_ctx *ctx, MPI_Comm comm, mha_module *m,
                                          const mha_forward_opts *opts, const mha_tensor *query,
                                          const mha_tensor *key, const mha_tensor *value,
                                          const mha_mask *mask, mha_tensor *out,
                                          mha_mpi_stats *stats);

/* Backward of the most recent mha_mpi_module_forward on m (MHA_ERR_STATE without one; the
 * same comm):
 *   dout: [B, Lr, E]; dquery, dkey, dvalue: this rank's input gradients, overwritten, each
 *   optional (NULL); self-attention: dquery only, as in mha_module_backward.
 * The parameter gradients are summed over the ranks in rank order (deterministic) and
 * ACCUMULATED (+=) into the module's gradients on every rank, so every rank holds the whole
 * sequence's gradient. The saved activations are released after a successful backward (one
 * backward per forward). An error on any rank (an allocation during the products, too) leaves
 * dquery, dkey, dvalue and the module's gradients unchanged on every rank: they are written
 * once every rank has all of its results (so is the forward's out). */
MHA_API mha_status mha_mpi_module_backward(mha_ctx *ctx, MPI_Comm comm, mha_module *m,
                                           const mha_tensor *dout, mha_tensor *dquery,
                                           mha_tensor *dkey, mha_tensor *dvalue,
                                           mha_mpi_stats *stats);

#ifdef __cplusplus
}
#endif
#endif /* MHA_MPI_H */
