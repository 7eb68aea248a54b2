/* mpi_internal.h - what the MPI calls (the files of src/mpi, include/mha_mpi.h) share: a
 * collective call's state, the agreement of the ranks before any work, and the ring's messages.
 * Never installed.
 *
 * A COLLECTIVE CALL, in this order (so that no rank can wait for another that has given up):
 *   mha__mpi_begin       a private duplicate of comm whose errors return;
 *   local checks         then mha__mpi_agree: every rank returns an error if one failed (its
 *                        own, or the first failing rank's, "rank R failed: ...");
 *   mha__mpi_agree_fp    the ranks' fingerprints (shapes, options) must be equal: else every
 *                        rank returns the first difference, "got X on rank R, expected Y as on
 *                        rank 0";
 *   allocations          then mha__mpi_agree again;
 *   the ring             a compute error (MHA_ERR_NOMEM in the core) does not stop the ring's
 *                        messages: the rank skips its compute and keeps exchanging, and
 *                        mha__mpi_agree after the ring returns the error everywhere;
 *   mha__mpi_end         frees the duplicate, fills the stats.
 */
#ifndef MHA_MPI_INTERNAL_H
#define MHA_MPI_INTERNAL_H

#include "mha_mpi.h"
#include "core/internal.h"

typedef struct {
    mha_ctx *ctx;
    const char *fn;
    MPI_Comm comm; /* the duplicate (MPI_COMM_NULL before mha__mpi_begin succeeds) */
    int rank, P;
    double t0; /* the call's start (timed: MPI_Wtime can be called) */
    int timed;
    mha_mpi_stats st; /* this call's measurements, copied out by mha__mpi_end */
} mha__mpi_call;

/* Starts a collective call on comm: clears ctx, checks that MPI is initialized
 * (MHA_ERR_STATE) and comm an intracommunicator (MHA_ERR_INVALID_ARG): then no rank can take
 * part, so every rank returns it without communicating; duplicates comm. */
mha_status mha__mpi_begin(mha__mpi_call *c, mha_ctx *ctx, const char *fn, MPI_Comm comm);
/* Ends it: frees the duplicate; stats (NULL: none) receives the measurements. Returns st. */
mha_status mha__mpi_end(mha__mpi_call *c, mha_status st, mha_mpi_stats *stats);

/* Every rank passes its own status (its message in c->ctx); every rank returns MHA_OK if all
 * passed MHA_OK. Else a rank that failed returns its own status and message, and the others the
 * lowest failing rank's status, with "fn: rank R failed: <its message without its fn prefix>". */
mha_status mha__mpi_agree(mha__mpi_call *c, mha_status st);

/* Refuses the masks that are not split across ranks (yet): key_lengths, attn_bool, attn_float,
 * window, ALiBi (MHA_ERR_UNSUPPORTED naming the field). NULL: no mask. */
mha_status mha__mpi_check_mask(mha_ctx *ctx, const char *fn, const mha_mask *m);

/* A fingerprint entry: a value every rank must give equally. */
typedef enum {
    MHA__FP_INT,   /* printed as an integer */
    MHA__FP_FLOAT, /* the bits of a float, printed as %g */
    MHA__FP_GIVEN, /* 0 / 1: printed "NULL" / "given" */
    MHA__FP_CAUSAL /* an mha_causal, printed by name: "top-left (1)" */
} mha__fp_kind;
typedef struct {
    const char *name; /* "k.shape[2]", "p->dropout_p" */
    mha__fp_kind kind;
    mha_status st; /* returned on a difference: MHA_ERR_SHAPE or MHA_ERR_INVALID_ARG */
    int64_t value;
} mha__fp;
#define MHA__FP_MAX 32
int64_t mha__fp_float(float x); /* the bits of x, as a fingerprint value */

/* The ranks compare their calls (c->fn) and n fingerprint entries (n <= MHA__FP_MAX, the same
 * n and names for one call): MHA_OK if every rank makes the same call with equal entries, else
 * on every rank the first rank in another call ("rank 1 called mha_mpi_attn_backward, expected
 * mha_mpi_attn_forward as rank 0"), or the first entry that differs: the value most ranks give
 * is the expected one (rank 0's on a tie), and the lowest rank that gives another is named
 * ("p->seed: got 8 on rank 0, expected 7 as on rank 1 (3 of 4 ranks)"). */
mha_status mha__mpi_agree_fp(mha__mpi_call *c, const mha__fp *fp, int n);

/* Non-blocking transfers of the ring, as pieces of at most 1 GiB (an MPI count is an int). */
#define MHA__XFER_MAX 64
typedef struct {
    MPI_Request req[MHA__XFER_MAX];
    int n;
} mha__xfer;
void mha__xfer_init(mha__xfer *x);
/* The largest transfer the ring can post, in bytes (pieces x piece size): larger blocks are
 * refused (MHA_ERR_UNSUPPORTED) before the ring starts. */
size_t mha__xfer_max_bytes(void);
/* Posts the send of bytes bytes of buf to rank dest (recv: from src), with tag; counts the
 * bytes sent in c->st. MHA_ERR_IO if MPI refuses. */
mha_status mha__xfer_send(mha__mpi_call *c, mha__xfer *x, const void *buf, size_t bytes, int dest,
                          int tag);
mha_status mha__xfer_recv(mha__mpi_call *c, mha__xfer *x, void *buf, size_t bytes, int src,
                          int tag);
/* Waits for every posted transfer of x (the time goes to c->st.comm_wait_s); MHA_ERR_IO
 * naming what on an MPI error. x is empty again after. */
mha_status mha__xfer_wait(mha__mpi_call *c, mha__xfer *x, const char *what);

/* Lets MPI move the posted transfers on (a rendezvous needs the receiver's attention, which it
 * gets only inside MPI calls): called between the core's calls of a ring step. */
void mha__mpi_progress(mha__mpi_call *c);

/* Seconds since an arbitrary origin (MPI_Wtime). */
double mha__mpi_now(void);

#endif
