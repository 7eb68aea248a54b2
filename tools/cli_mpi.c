/* cli_mpi.c - the mha tool launched by mpirun (see cli_mpi.h): starting MPI only then, one
 * error line for all ranks, the sequence split into each rank's shard and the shards gathered
 * back on rank 0. Compiled only when CMake found MPI (MHA_HAVE_MPI). */
#include "cli_mpi.h"
#include "mha_mpi.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

/* ---------------------------------------------------------------------------------------------
 * Starting and ending MPI; the output of ranks > 0
 * ------------------------------------------------------------------------------------------- */
static struct {
    int active, rank, size;
    FILE *held;   /* ranks > 0: where stderr goes until cli_mpi_agree decides (a tmpfile) */
    int real_err; /* ranks > 0: the real stderr (a dup of fd 2) */
} g = {0, 0, 1, NULL, -1};

/* mpirun (Open MPI's, or a PMI / PMIx launcher) tells its processes so in the environment. */
static int launched_by_mpirun(void) {
    static const char *const vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
        if (getenv(vars[i])) return 1;
    return 0;
}

/* Ranks > 0: stdout to /dev/null, stderr into a temporary file (held until cli_mpi_agree). */
static int hold_output(void) {
    int null = open("/dev/null", O_WRONLY);
    if (null < 0 || dup2(null, STDOUT_FILENO) < 0) return -1;
    close(null);
    fflush(stderr);
    g.held = tmpfile();
    g.real_err = dup(STDERR_FILENO);
    if (!g.held || g.real_err < 0 || dup2(fileno(g.held), STDERR_FILENO) < 0) return -1;
    return 0;
}

static void release_output(void) {
    if (g.real_err >= 0) {
        fflush(stderr);
        dup2(g.real_err, STDERR_FILENO);
        close(g.real_err);
        g.real_err = -1;
    }
    if (g.held) fclose(g.held);
    g.held = NULL;
}

int cli_mpi_begin(void) {
    if (!launched_by_mpirun()) return 0;
    int provided = 0;
    if (MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
        return cli_fail("MPI_Init_thread failed (launched by mpirun: OMPI_COMM_WORLD_SIZE, "
                        "PMI_SIZE or PMIX_RANK is set)");
    MPI_Comm_rank(MPI_COMM_WORLD, &g.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g.size);
    g.active = 1;
    int rc = 0;
    if (g.rank > 0 && hold_output())
        rc = cli_fail("rank %d: cannot redirect its output (/dev/null, a temporary file)", g.rank);
    if (provided < MPI_THREAD_FUNNELED)
        rc = cli_fail("MPI_Init_thread: thread support %d, expected MPI_THREAD_FUNNELED", provided);
    return cli_mpi_agree(rc);
}

int cli_mpi_end(int rc) {
    if (!g.active) return rc;
    release_output();
    MPI_Finalize();
    g.active = 0;
    return rc;
}

int cli_mpi_active(void) { return g.active; }
int cli_mpi_rank(void) { return g.rank; }
int cli_mpi_size(void) { return g.size; }

/* Prints what this rank held back on its real stderr, "mha: " turned into "mha[rank R]: ". */
static void print_held(void) {
    fflush(stderr);
    off_t n = lseek(STDERR_FILENO, 0, SEEK_CUR); /* fd 2 shares the held file's offset */
    if (n <= 0) return;
    char *buf = malloc((size_t)n + 1);
    FILE *err = fdopen(dup(g.real_err), "w");
    if (buf && err && pread(fileno(g.held), buf, (size_t)n, 0) == (ssize_t)n) {
        buf[n] = '\0';
        for (char *line = buf, *next; *line; line = next) {
            char *nl = strchr(line, '\n');
            next = nl ? nl + 1 : line + strlen(line);
            if (!strncmp(line, "mha: ", 5)) fprintf(err, "mha[rank %d]: ", g.rank), line += 5;
            fwrite(line, 1, (size_t)(next - line), err);
        }
    }
    if (err) fclose(err);
    free(buf);
}

/* Drops what this rank held back so far. */
static void drop_held(void) {
    fflush(stderr);
    if (ftruncate(STDERR_FILENO, 0) == 0) lseek(STDERR_FILENO, 0, SEEK_SET);
}

int cli_mpi_agree(int rc) {
    if (!g.active) return rc;
    /* (this rank if it failed, else size; its code): the minimum is the lowest failing rank */
    struct {
        int rank, code;
    } mine = {rc ? g.rank : g.size, rc}, first;
    MPI_Allreduce(&mine, &first, 1, MPI_2INT, MPI_MINLOC, MPI_COMM_WORLD);
    if (g.held) {
        if (first.rank == g.rank && g.rank > 0) print_held();
        drop_held();
    }
    return first.rank < g.size ? first.code : 0;
}

/* ---------------------------------------------------------------------------------------------
 * Shards: which rows of the sequence a rank holds, taken out of a whole input and gathered back
 * into a whole output on rank 0
 * ------------------------------------------------------------------------------------------- */

/* A rank's tokens of a sequence of n (mha_mpi_shard): run 0, then run 1, nr in all. */
typedef struct {
    int64_t n, nr, start[2], len[2];
} seq_shard;

/* The shard of rank `rank` of a sequence of n tokens; opt names the input in the message. */
static int shard_of(mha_ctx *ctx, mha_mpi_layout layout, int64_t n, int rank, const char *opt,
                    seq_shard *s) {
    s->n = n;
    if (mha_mpi_shard(ctx, layout, n, rank, g.size, s->start, s->len) != MHA_OK)
        return cli_fail_lib(ctx, opt);
    s->nr = s->len[0] + s->len[1];
    return 0;
}

/* Copies the shard's rows between a whole [B, n, row] buffer and a shard [B, nr, row] buffer
 * (row bytes each): to_shard 1 whole -> shard, 0 shard -> whole. */
static void copy_runs(const seq_shard *s, int64_t B, size_t row, char *whole, char *shard,
                      int to_shard) {
    for (int64_t b = 0; b < B; b++) {
        int64_t at = 0;
        for (int r = 0; r < 2; r++) {
            char *w = whole + (size_t)(b * s->n + s->start[r]) * row;
            char *p = shard + (size_t)(b * s->nr + at) * row;
            size_t bytes = (size_t)s->len[r] * row;
            if (bytes) memmove(to_shard ? p : w, to_shard ? w : p, bytes);
            at += s->len[r];
        }
    }
}

/* Bytes of one row of a: the elements after its sequence dimension seq_dim. */
static size_t row_bytes(const mha_array *a, int seq_dim) {
    size_t row = mha_dtype_size(a->dtype);
    for (int d = seq_dim + 1; d < a->ndim; d++) row *= (size_t)a->shape[d];
    return row;
}

/* *out = this rank's shard of the whole input a ([B, n, ...], or [n, ...] when !batched),
 * always with the batch dimension: [B, nr, ...] ([1, nr, ...] unbatched). */
static mha_status take_shard(mha_ctx *ctx, const mha_array *a, int batched, const seq_shard *s,
                             mha_array *out) {
    int64_t shape[MHA_MAX_DIMS];
    int nd = 0, seq_dim = batched ? 1 : 0;
    shape[nd++] = batched ? a->shape[0] : 1;
    shape[nd++] = s->nr;
    for (int d = seq_dim + 1; d < a->ndim; d++) shape[nd++] = a->shape[d];
    mha_status st = mha_array_alloc(ctx, a->dtype, nd, shape, out);
    if (st == MHA_OK) copy_runs(s, shape[0], row_bytes(a, seq_dim), a->data, out->data, 1);
    return st;
}

/* A float32 array shaped as the shard of a whole float32 array of `like`'s shape. */
static mha_status alloc_shard(mha_ctx *ctx, const mha_array *like, int batched, const seq_shard *s,
                              mha_array *out) {
    int64_t shape[MHA_MAX_DIMS];
    int nd = 0;
    shape[nd++] = batched ? like->shape[0] : 1;
    shape[nd++] = s->nr;
    for (int d = (batched ? 1 : 0) + 1; d < like->ndim; d++) shape[nd++] = like->shape[d];
    return mha_array_alloc(ctx, MHA_DTYPE_F32, nd, shape, out);
}

/* Collective: every rank's float32 shard ([B, nr, ...], the layout's rows of a sequence of
 * s->n) into *whole on rank 0, which allocated it ([B, n, ...] or unbatched [n, ...]) and tmp
 * (at least one shard's bytes) beforehand: nothing here can fail but MPI itself. */
static void gather_shards(mha_ctx *ctx, mha_mpi_layout layout, const seq_shard *s,
                          const mha_array *shard, mha_array *whole, void *tmp) {
    const int64_t B = shard->shape[0];
    const size_t row = row_bytes(shard, 1);
    MPI_Datatype row_type;
    MPI_Type_contiguous((int)(row / sizeof(float)), MPI_FLOAT, &row_type);
    MPI_Type_commit(&row_type);
    const int rows = (int)(B * s->nr);
    if (g.rank > 0) {
        MPI_Send(shard->data, rows, row_type, 0, 0, MPI_COMM_WORLD);
    } else {
        copy_runs(s, B, row, whole->data, shard->data, 0);
        for (int r = 1; r < g.size; r++) {
            /* rank 0's n splits (its shard_of succeeded), so every rank's does */
            seq_shard other = {s->n, 0, {0, 0}, {0, 0}};
            mha_mpi_shard(ctx, layout, s->n, r, g.size, other.start, other.len);
            other.nr = other.len[0] + other.len[1];
            MPI_Recv(tmp, rows, row_type, r, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            copy_runs(&other, B, row, whole->data, tmp, 0);
        }
    }
    MPI_Type_free(&row_type);
}

/* ---------------------------------------------------------------------------------------------
 * mha forward / backward
 * ------------------------------------------------------------------------------------------- */
int cli_mpi_layer_check(const cli_layer_args *a, int want_weights) {
    if (!g.active) return 0;
    const char *hint = "run it in one process (without mpirun) for that";
    if (want_weights)
        return cli_usage_error(hint, "--attn-out: the attention weights are not available under "
                                     "mpirun (ring attention never holds a whole row of them)");
    if (a->attn_mask)
        return cli_usage_error(hint, "--attn-mask: not supported under mpirun (an [L, S] mask is "
                                     "not split across the ranks; --causal and "
                                     "--key-padding-mask are)");
    if (a->dtype != MHA_DTYPE_F32)
        return cli_usage_error(hint,
                               "--dtype %s: not supported under mpirun (the ring computes "
                               "in float32)",
                               a->dtype_name);
    return 0;
}

/* The shards of l's query and keys (cross-attention's keys are a sequence of their own), in
 * the layout of l's mask. */
static int layer_shards(cli_layer *l, mha_mpi_layout *layout, seq_shard *qs, seq_shard *ks) {
    *layout = mha_mpi_layout_for(&l->mask);
    int rc = shard_of(l->ctx, *layout, l->L, g.rank, "--query", qs);
    if (rc || !l->cross) return *ks = *qs, rc;
    return shard_of(l->ctx, *layout, l->S, g.rank, "--key", ks);
}

/* What a layer call holds on this rank: its shards of the inputs and the results, and on rank
 * 0 (of several) a buffer to receive the other ranks' shards in. */
typedef struct {
    mha_array q, k, v, kpm, out, dout, dq, dk, dv, tmp;
} layer_shard;

static void layer_shard_free(layer_shard *s) {
    mha_array *arrs[] = {&s->q,    &s->k,  &s->v,  &s->kpm, &s->out,
                         &s->dout, &s->dq, &s->dk, &s->dv,  &s->tmp};
    for (size_t i = 0; i < sizeof arrs / sizeof arrs[0]; i++) mha_array_free(arrs[i]);
}

/* Rank 0 (of several): s->tmp, as large as the largest of the n results it will receive. */
static mha_status alloc_tmp(mha_ctx *ctx, layer_shard *s, mha_array *const *results, int n) {
    int64_t most = 1;
    for (int i = 0; i < n; i++)
        if (results[i]->data && mha_array_numel(results[i]) > most)
            most = mha_array_numel(results[i]);
    if (g.rank > 0 || g.size == 1) return MHA_OK;
    return mha_array_alloc(ctx, MHA_DTYPE_F32, 1, &most, &s->tmp);
}

int cli_mpi_layer_forward(cli_layer *l, mha_forward_opts fo, mha_array *out) {
    mha_ctx *ctx = l->ctx;
    mha_mpi_layout layout;
    seq_shard qs, ks;
    layer_shard s;
    memset(&s, 0, sizeof s);
    memset(out, 0, sizeof *out);
    int64_t os[3];
    int on = cli_layer_out_shape(l, os);
    /* every buffer first, agreed on: the ring and the gather then cannot fail half-way */
    int rc = layer_shards(l, &layout, &qs, &ks);
    if (!rc && (take_shard(ctx, &l->query, l->batched, &qs, &s.q) ||
                (l->cross && (take_shard(ctx, &l->key, l->batched, &ks, &s.k) ||
                              take_shard(ctx, &l->value, l->batched, &ks, &s.v))) ||
                (l->kpm.data && take_shard(ctx, &l->kpm, l->batched, &ks, &s.kpm)) ||
                alloc_shard(ctx, &l->query, l->batched, &qs, &s.out) ||
                (g.rank == 0 && mha_array_alloc(ctx, MHA_DTYPE_F32, on, os, out)) ||
                alloc_tmp(ctx, &s, (mha_array *[]){&s.out}, 1)))
        rc = cli_fail_lib(ctx, NULL);
    if (!(rc = cli_mpi_agree(rc))) {
        fo.scale = l->scale;
        mha_mask mask = l->mask;
        mask.key_padding = s.kpm.data;
        mha_tensor tq = cli_array_tensor(&s.q), tk = cli_array_tensor(&s.k),
                   tv = cli_array_tensor(&s.v), to = cli_array_tensor(&s.out);
        if (mha_mpi_module_forward(ctx, MPI_COMM_WORLD, l->module, &fo, &tq, l->cross ? &tk : NULL,
                                   l->cross ? &tv : NULL, &mask, &to, NULL) != MHA_OK)
            rc = cli_fail_lib(ctx, NULL);
        if (!(rc = cli_mpi_agree(rc))) gather_shards(ctx, layout, &qs, &s.out, out, s.tmp.data);
    }
    layer_shard_free(&s);
    if (rc) mha_array_free(out);
    return rc;
}

int cli_mpi_layer_backward(cli_layer *l, const mha_array *dout, mha_array *dquery, mha_array *dkey,
                           mha_array *dvalue) {
    mha_ctx *ctx = l->ctx;
    mha_mpi_layout layout;
    seq_shard qs, ks;
    layer_shard s;
    memset(&s, 0, sizeof s);
    mha_array *whole[3] = {dquery, dkey, dvalue};
    for (int i = 0; i < 3; i++) memset(whole[i], 0, sizeof *whole[i]);
    const mha_array *inputs[3] = {&l->query, &l->key, &l->value};
    mha_array *grads[3] = {&s.dq, &s.dk, &s.dv};
    const seq_shard *seqs[3] = {&qs, &ks, &ks};
    const int n = l->cross ? 3 : 1;
    int rc = layer_shards(l, &layout, &qs, &ks);
    if (!rc && take_shard(ctx, dout, l->batched, &qs, &s.dout)) rc = cli_fail_lib(ctx, NULL);
    for (int i = 0; i < n && !rc; i++)
        if (alloc_shard(ctx, inputs[i], l->batched, seqs[i], grads[i]) ||
            (g.rank == 0 &&
             mha_array_alloc(ctx, MHA_DTYPE_F32, inputs[i]->ndim, inputs[i]->shape, whole[i])))
            rc = cli_fail_lib(ctx, NULL);
    if (!rc && alloc_tmp(ctx, &s, grads, n)) rc = cli_fail_lib(ctx, NULL);
    if (!(rc = cli_mpi_agree(rc))) {
        mha_tensor tdy = cli_array_tensor(&s.dout), tdq = cli_array_tensor(&s.dq),
                   tdk = cli_array_tensor(&s.dk), tdv = cli_array_tensor(&s.dv);
        if (mha_mpi_module_backward(ctx, MPI_COMM_WORLD, l->module, &tdy, &tdq,
                                    l->cross ? &tdk : NULL, l->cross ? &tdv : NULL, NULL) != MHA_OK)
            rc = cli_fail_lib(ctx, NULL);
        if (!(rc = cli_mpi_agree(rc)))
            for (int i = 0; i < n; i++)
                gather_shards(ctx, layout, seqs[i], grads[i], whole[i], s.tmp.data);
    }
    layer_shard_free(&s);
    if (rc)
        for (int i = 0; i < 3; i++) mha_array_free(whole[i]);
    return rc;
}

/* ---------------------------------------------------------------------------------------------
 * mha bench --core
 * ------------------------------------------------------------------------------------------- */
int cli_mpi_shard_len(mha_ctx *ctx, const mha_mask *mask, int64_t n, const char *opt, int64_t *nr) {
    seq_shard s;
    int rc = shard_of(ctx, mha_mpi_layout_for(mask), n, g.rank, opt, &s);
    *nr = rc ? 0 : s.nr;
    return rc;
}

static void tally_add(cli_mpi_tally *t, const mha_mpi_stats *st) {
    t->compute_s += st->compute_s;
    t->comm_wait_s += st->comm_wait_s;
    t->total_s += st->total_s;
    t->work += st->work;
    t->bytes_sent += (double)st->bytes_sent;
    t->calls++;
}

mha_status cli_mpi_attn_forward(mha_ctx *ctx, const mha_attn_params *p, const mha_tensor *q,
                                const mha_tensor *k, const mha_tensor *v, const mha_mask *mask,
                                mha_tensor *out, mha_tensor *lse, cli_mpi_tally *t) {
    mha_mpi_stats st;
    memset(&st, 0, sizeof st);
    mha_status s = mha_mpi_attn_forward(ctx, MPI_COMM_WORLD, p, q, k, v, mask, out, lse, &st);
    if (s == MHA_OK) tally_add(t, &st);
    return s;
}

mha_status cli_mpi_attn_backward(mha_ctx *ctx, const mha_attn_params *p, const mha_tensor *q,
                                 const mha_tensor *k, const mha_tensor *v, const mha_mask *mask,
                                 const mha_tensor *out, const mha_tensor *lse,
                                 const mha_tensor *dout, mha_tensor *dq, mha_tensor *dk,
                                 mha_tensor *dv, cli_mpi_tally *t) {
    mha_mpi_stats st;
    memset(&st, 0, sizeof st);
    mha_status s = mha_mpi_attn_backward(ctx, MPI_COMM_WORLD, p, q, k, v, mask, out, lse, dout, dq,
                                         dk, dv, &st);
    if (s == MHA_OK) tally_add(t, &st);
    return s;
}

void cli_mpi_barrier(void) {
    if (g.active) MPI_Barrier(MPI_COMM_WORLD);
}

double cli_mpi_max(double x) {
    double m = x;
    if (g.active) MPI_Allreduce(&x, &m, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    return m;
}

int cli_mpi_same(double x) {
    if (!g.active) return 1;
    double v[2] = {x, -x}, m[2]; /* the largest x and minus the smallest */
    MPI_Allreduce(v, m, 2, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    return m[0] == -m[1];
}

/* What one rank reports: per call of each direction, and its peak memory. */
enum {
    R_COMPUTE,
    R_WAIT,
    R_TOTAL,
    R_WORK,
    R_SENT,
    R_NFIELDS
};
typedef struct {
    double dir[2][R_NFIELDS];
    double peak_mib;
} rank_report;

static rank_report rank_report_of(const cli_mpi_tally t[2], int ndir) {
    rank_report r;
    memset(&r, 0, sizeof r);
    for (int d = 0; d < ndir; d++) {
        const double n = t[d].calls > 0 ? t[d].calls : 1;
        r.dir[d][R_COMPUTE] = t[d].compute_s / n;
        r.dir[d][R_WAIT] = t[d].comm_wait_s / n;
        r.dir[d][R_TOTAL] = t[d].total_s / n;
        r.dir[d][R_WORK] = t[d].work / n;
        r.dir[d][R_SENT] = t[d].bytes_sent / n;
    }
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0) r.peak_mib = (double)ru.ru_maxrss / 1024.0; /* KiB */
    return r;
}

/* max / mean of field f of direction d over the ranks (1 when every rank did nothing). */
static double balance(const rank_report *all, int n, int d, int f) {
    double most = 0, sum = 0;
    for (int i = 0; i < n; i++) {
        sum += all[i].dir[d][f];
        if (all[i].dir[d][f] > most) most = all[i].dir[d][f];
    }
    return sum > 0 ? most / (sum / n) : 1.0;
}

static void print_json(const rank_report *all, int n, int ndir, int causal) {
    static const char *const dn[2] = {"fwd", "bwd"};
    printf(",\"mpi\":{\"ranks\":%d,\"layout\":\"%s\"", n, causal ? "zigzag" : "contiguous");
    for (int d = 0; d < ndir; d++)
        printf(",\"%s_work_balance\":%.4f", dn[d], balance(all, n, d, R_WORK));
    printf(",\"per_rank\":[");
    for (int i = 0; i < n; i++) {
        printf("%s{\"rank\":%d", i ? "," : "", i);
        for (int d = 0; d < ndir; d++) {
            const double *x = all[i].dir[d];
            printf(",\"%s_compute_ms\":%.4f,\"%s_comm_wait_ms\":%.4f,\"%s_total_ms\":%.4f,"
                   "\"%s_work\":%.6g,\"%s_bytes_sent\":%.6g",
                   dn[d], x[R_COMPUTE] * 1e3, dn[d], x[R_WAIT] * 1e3, dn[d], x[R_TOTAL] * 1e3,
                   dn[d], x[R_WORK], dn[d], x[R_SENT]);
        }
        printf(",\"peak_rss_mib\":%.1f}", all[i].peak_mib);
    }
    printf("]}");
}

static void print_text(const rank_report *all, int n, int ndir, int causal) {
    static const char *const dn[2] = {"forward", "backward"};
    printf("  mpi: %d ranks, %s layout; per rank, per call (mean of the timed calls):\n", n,
           causal ? "zigzag" : "contiguous");
    for (int i = 0; i < n; i++) {
        printf("  rank %d:", i);
        for (int d = 0; d < ndir; d++) {
            const double *x = all[i].dir[d];
            printf("%s %s compute %.3f ms, comm wait %.3f ms, total %.3f ms, work %.4g MAC, "
                   "sent %.2f MiB",
                   d ? ";" : "", dn[d], x[R_COMPUTE] * 1e3, x[R_WAIT] * 1e3, x[R_TOTAL] * 1e3,
                   x[R_WORK], x[R_SENT] / 1048576.0);
        }
        printf("; peak memory %.1f MiB\n", all[i].peak_mib);
    }
    printf("  work balance max/mean: forward %.4f", balance(all, n, 0, R_WORK));
    if (ndir > 1) printf(", backward %.4f", balance(all, n, 1, R_WORK));
    printf("\n");
}

int cli_mpi_bench_report(const cli_mpi_tally t[2], int backward, int causal, int json) {
    const int ndir = backward ? 2 : 1;
    rank_report mine = rank_report_of(t, ndir);
    rank_report *all = g.rank == 0 ? calloc((size_t)g.size, sizeof *all) : NULL;
    int rc = g.rank == 0 && !all ? cli_fail("out of memory for the report of %d ranks", g.size) : 0;
    if ((rc = cli_mpi_agree(rc))) return rc;
    const int nd = (int)(sizeof mine / sizeof(double)); /* rank_report is doubles only */
    MPI_Gather(&mine, nd, MPI_DOUBLE, all, nd, MPI_DOUBLE, 0, MPI_COMM_WORLD);
    if (g.rank == 0) {
        if (json) print_json(all, g.size, ndir, causal);
        else print_text(all, g.size, ndir, causal);
    }
    free(all);
    return 0;
}
