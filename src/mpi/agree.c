/* agree.c - a collective call's state, the ranks' agreement on status and fingerprints, and
 * the ring's transfers (see mpi_internal.h). */
#include "mpi/mpi_internal.h"

#include <stdio.h>
#include <string.h>

double mha__mpi_now(void) { return MPI_Wtime(); }

void mha__mpi_progress(mha__mpi_call *c) {
    int flag;
    MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, c->comm, &flag, MPI_STATUS_IGNORE);
}

mha_status mha__mpi_begin(mha__mpi_call *c, mha_ctx *ctx, const char *fn, MPI_Comm comm) {
    memset(c, 0, sizeof *c);
    c->ctx = ctx, c->fn = fn, c->comm = MPI_COMM_NULL;
    mha__clear(ctx);
    int init = 0, fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    if (!init || fin)
        return mha__err(ctx, MHA_ERR_STATE,
                        "%s: MPI is %s, expected a call between MPI_Init and "
                        "MPI_Finalize",
                        fn, fin ? "finalized" : "not initialized");
    c->t0 = mha__mpi_now(), c->timed = 1;
    if (comm == MPI_COMM_NULL)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: comm: got MPI_COMM_NULL, expected a communicator", fn);
    /* An intercommunicator's ranks and collectives are those of the remote group: its ring
     * would pair shards of two groups (wrong results, or MPI errors when the groups differ in
     * size). Every rank of both groups passes it, so every one refuses it here. */
    int inter = 0;
    if (MPI_Comm_test_inter(comm, &inter) == MPI_SUCCESS && inter)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: comm: got an intercommunicator, expected an intracommunicator (the "
                        "ranks that share the sequence)",
                        fn);
    /* A private communicator: the ring's messages never meet the caller's, and MPI errors
     * return to us (the caller's comm keeps its own error handler). */
    if (MPI_Comm_dup(comm, &c->comm) != MPI_SUCCESS) {
        c->comm = MPI_COMM_NULL;
        return mha__err(ctx, MHA_ERR_IO, "%s: MPI_Comm_dup failed", fn);
    }
    MPI_Comm_set_errhandler(c->comm, MPI_ERRORS_RETURN);
    MPI_Comm_rank(c->comm, &c->rank);
    MPI_Comm_size(c->comm, &c->P);
    return MHA_OK;
}

mha_status mha__mpi_end(mha__mpi_call *c, mha_status st, mha_mpi_stats *stats) {
    if (c->comm != MPI_COMM_NULL) MPI_Comm_free(&c->comm);
    c->st.total_s = c->timed ? mha__mpi_now() - c->t0 : 0;
    if (stats) *stats = c->st;
    return st;
}

mha_status mha__mpi_agree(mha__mpi_call *c, mha_status st) {
    int mine = st != MHA_OK ? c->rank : c->P, first = c->P;
    if (MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, c->comm) != MPI_SUCCESS)
        return mha__err(c->ctx, MHA_ERR_IO, "%s: MPI_Allreduce failed (agreeing on the status)",
                        c->fn);
    if (first == c->P) return MHA_OK;
    /* The failing rank's status and message, to every rank. */
    struct {
        int st;
        char msg[MHA__MSG_CAP];
    } m;
    memset(&m, 0, sizeof m);
    if (c->rank == first) {
        m.st = (int)st;
        snprintf(m.msg, sizeof m.msg, "%s", mha_ctx_errmsg(c->ctx));
    }
    if (MPI_Bcast(&m, (int)sizeof m, MPI_BYTE, first, c->comm) != MPI_SUCCESS)
        return mha__err(c->ctx, MHA_ERR_IO, "%s: MPI_Bcast failed (rank %d's error)", c->fn, first);
    if (st) return st; /* a rank that failed reports its own error */
    m.msg[sizeof m.msg - 1] = 0;
    const char *why = m.msg;
    const size_t nf = strlen(c->fn);
    if (strncmp(why, c->fn, nf) == 0 && strncmp(why + nf, ": ", 2) == 0) why += nf + 2;
    return mha__err(c->ctx, (mha_status)m.st, "%s: rank %d failed: %s", c->fn, first, why);
}

mha_status mha__mpi_check_mask(mha_ctx *ctx, const char *fn, const mha_mask *m) {
    if (!m) return MHA_OK;
    const char *what = m->key_lengths    ? "key_lengths"
                       : m->attn_bool    ? "attn_bool"
                       : m->attn_float   ? "attn_float"
                       : m->window       ? "window"
                       : m->alibi_slopes ? "alibi_slopes"
                                         : NULL;
    if (what)
        return mha__err(ctx, MHA_ERR_UNSUPPORTED,
                        "%s: mask->%s: got a mask, expected none (across ranks: causal and "
                        "key_padding only, for now)",
                        fn, what);
    return MHA_OK;
}

int64_t mha__fp_float(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return (int64_t)u;
}

static void fp_print(char *buf, size_t n, const mha__fp *f, int64_t v) {
    if (f->kind == MHA__FP_GIVEN) snprintf(buf, n, "%s", v ? "given" : "NULL");
    else if (f->kind == MHA__FP_CAUSAL)
        snprintf(buf, n, "%s (%lld)",
                 v == MHA_CAUSAL_NONE           ? "none"
                 : v == MHA_CAUSAL_TOP_LEFT     ? "top-left"
                 : v == MHA_CAUSAL_BOTTOM_RIGHT ? "bottom-right"
                                                : "unknown",
                 (long long)v);
    else if (f->kind == MHA__FP_FLOAT) {
        uint32_t u = (uint32_t)v;
        float x;
        memcpy(&x, &u, sizeof x);
        snprintf(buf, n, "%g", (double)x);
    } else snprintf(buf, n, "%lld", (long long)v);
}

/* What each rank contributes to the comparison: the same size whatever the call, so that
 * ranks that make different calls still meet in one MPI_Allgather, and learn it. */
typedef struct {
    char fn[40];
    int64_t v[MHA__FP_MAX];
} fp_msg;

mha_status mha__mpi_agree_fp(mha__mpi_call *c, const mha__fp *fp, int n) {
    fp_msg mine;
    memset(&mine, 0, sizeof mine);
    snprintf(mine.fn, sizeof mine.fn, "%s", c->fn);
    for (int i = 0; i < n; i++) mine.v[i] = fp[i].value;
    fp_msg *all = mha__malloc(sizeof(fp_msg) * (size_t)c->P);
    mha_status st =
        all ? MHA_OK
            : mha__err(c->ctx, MHA_ERR_NOMEM, "%s: out of memory (%d ranks' options)", c->fn, c->P);
    if ((st = mha__mpi_agree(c, st))) {
        mha__free(all);
        return st;
    }
    if (MPI_Allgather(&mine, (int)sizeof mine, MPI_BYTE, all, (int)sizeof mine, MPI_BYTE,
                      c->comm) != MPI_SUCCESS) {
        mha__free(all);
        return mha__err(c->ctx, MHA_ERR_IO, "%s: MPI_Allgather failed (agreeing on the options)",
                        c->fn);
    }
    /* The first rank in another call; else the first entry that differs, and the first rank
     * that differs from rank 0 there: the same on every rank, since every rank sees every
     * value. */
    for (int r = 0; r < c->P && !st; r++)
        if (strncmp(all[r].fn, all[0].fn, sizeof all[r].fn) != 0)
            st = mha__err(c->ctx, MHA_ERR_INVALID_ARG,
                          "%s: rank %d called %.40s, expected %.40s as rank 0 (every rank must "
                          "make the same call)",
                          c->fn, r, all[r].fn, all[0].fn);
    for (int i = 0; i < n && !st; i++) {
        /* the value most ranks give (rank 0's on a tie), the first rank that gives it and how
         * many do; then the first rank that gives another */
        int maj = 0, votes = 0, bad = -1;
        for (int r = 0; r < c->P; r++) {
            int k = 0;
            for (int s = 0; s < c->P; s++) k += all[s].v[i] == all[r].v[i];
            if (k > votes) maj = r, votes = k;
        }
        for (int r = 0; r < c->P && bad < 0; r++)
            if (all[r].v[i] != all[maj].v[i]) bad = r;
        if (bad < 0) continue;
        char g[32], w[32], of[40] = "";
        fp_print(g, sizeof g, &fp[i], all[bad].v[i]);
        fp_print(w, sizeof w, &fp[i], all[maj].v[i]);
        if (votes > 1) snprintf(of, sizeof of, " (%d of %d ranks)", votes, c->P);
        st = mha__err(c->ctx, fp[i].st, "%s: %s: got %s on rank %d, expected %s as on rank %d%s",
                      c->fn, fp[i].name, g, bad, w, maj, of);
    }
    mha__free(all);
    return st;
}

/* ---------------------------------------------------------------------------------------------
 * Transfers
 * ------------------------------------------------------------------------------------------- */
#define XFER_PIECE ((size_t)1 << 30)

void mha__xfer_init(mha__xfer *x) { x->n = 0; }

size_t mha__xfer_max_bytes(void) { return XFER_PIECE * (MHA__XFER_MAX / 2); }

static mha_status xfer_post(mha__mpi_call *c, mha__xfer *x, void *buf, size_t bytes, int peer,
                            int tag, int send) {
    for (size_t o = 0; o < bytes; o += XFER_PIECE) {
        const size_t nb = bytes - o < XFER_PIECE ? bytes - o : XFER_PIECE;
        if (x->n == MHA__XFER_MAX)
            return mha__err(c->ctx, MHA_ERR_UNSUPPORTED,
                            "%s: a ring message of %zu bytes: too many pieces", c->fn, bytes);
        char *p = (char *)buf + o;
        int rc = send ? MPI_Isend(p, (int)nb, MPI_BYTE, peer, tag, c->comm, &x->req[x->n])
                      : MPI_Irecv(p, (int)nb, MPI_BYTE, peer, tag, c->comm, &x->req[x->n]);
        if (rc != MPI_SUCCESS)
            return mha__err(c->ctx, MHA_ERR_IO, "%s: MPI_%s failed (rank %d %s rank %d)", c->fn,
                            send ? "Isend" : "Irecv", c->rank, send ? "to" : "from", peer);
        x->n++;
    }
    if (send) c->st.bytes_sent += (int64_t)bytes;
    return MHA_OK;
}

mha_status mha__xfer_send(mha__mpi_call *c, mha__xfer *x, const void *buf, size_t bytes, int dest,
                          int tag) {
    return xfer_post(c, x, (void *)buf, bytes, dest, tag, 1);
}

mha_status mha__xfer_recv(mha__mpi_call *c, mha__xfer *x, void *buf, size_t bytes, int src,
                          int tag) {
    return xfer_post(c, x, buf, bytes, src, tag, 0);
}

mha_status mha__xfer_wait(mha__mpi_call *c, mha__xfer *x, const char *what) {
    if (x->n == 0) return MHA_OK;
    const double t = mha__mpi_now();
    int rc = MPI_Waitall(x->n, x->req, MPI_STATUSES_IGNORE);
    c->st.comm_wait_s += mha__mpi_now() - t;
    x->n = 0;
    if (rc != MPI_SUCCESS)
        return mha__err(c->ctx, MHA_ERR_IO, "%s: MPI_Waitall failed (%s)", c->fn, what);
    return MHA_OK;
}
