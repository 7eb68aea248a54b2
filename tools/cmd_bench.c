/* cmd_bench.c - `mha bench`: times the module, the attention core, or the gemm on random data.
 *
 *   mha bench --batch B --seq N --embed E --heads H [--causal] [--backward] [--core]
 *             [--kv-heads G] [--need-weights] [--dtype f32|bf16|f16] [--threads T]
 *             [--isa NAME] [--runs R] [--json]
 *   mha bench --core ... [--seq-k S] [--head-dim D] [--window L,R] [--softcap C] [--alibi]
 *             [--dtype f32|bf16|f16]
 *   mha bench --gemm M N K [--ta 0|1] [--tb 0|1] [--dtype f32|bf16|f16] [--threads T]
 *             [--isa NAME] [--runs R] [--json]
 *   mha bench --core --decode --batch B --seq-k S --heads H --head-dim D [--kv-heads G]
 *             [--layout bhsd|bshd] [--page-size P] [--dtype f32|bf16|f16] [--bw-mib M]
 *             [--threads T] [--isa NAME] [--runs R] [--json]
 *
 * Each measurement: warm-up runs, then R timed runs; the median is reported. FLOP counts
 * (nominal, the same for every implementation compared in BENCHMARKS.md), with D = E / H
 * (--head-dim D for the core):
 *   core forward   F = 4 * B * H * N * N * D           (F / 2 with --causal)
 *                  with --window or --seq-k S != N: F = 4 * B * H * D * (the number of
 *                  (query, key) pairs the causal mask and the window allow; N * S without)
 *   core backward  2.5 * F
 *   projections    P = 2 * B * N * E * 3E + 2 * B * N * E * E
 *   module forward F + P;  module backward 2 * P + 2.5 * F
 *   gemm           2 * M * N * K   (any --dtype: mha_gemm, A and B of that dtype, C float32)
 * --backward times forward + backward (and reports both phases). The module's forward runs
 * in inference mode without --backward, with save_for_backward on with it. --need-weights
 * also asks the module for the attention weights averaged over heads, [B, N, N], as
 * nn.MultiheadAttention(need_weights=True) returns them (the FLOP count stays nominal).
 * When stderr is a terminal, one line there says which run is going (erased at the end).
 * --decode (the DECODE block below) times one decoding step instead: mha_attn_kvcache of one
 * query token per sequence against a cache of S tokens (the new token appended at S - 1), and
 * reports the rate at which it reads K and V (B * G * S * 2D elements per step, S the keys the
 * token may see: min(S, L + 1) with --window L,R: 4 bytes each, 2 with --dtype bf16 or f16, q,
 * the caches and out then all of that dtype) beside the
 * machine's memory read bandwidth measured in the same run. With --page-size P the caches are
 * paged (mha_attn_kvcache_paged): pools of B * ceil(S / P) pages of P rows, each sequence's
 * blocks on pages in a shuffled order (as an engine's allocator leaves them).
 *
 * Under mpirun (tools/cli_mpi.h), --core times the ring attention over the ranks, each on its
 * shard of the sequence, and reports every rank's measurements (mha_mpi_stats).
 *
 * Steps: validate (parse_args, check_args), plan (plan_bench: buffers, module, FLOPs), measure
 * (warm-up and timed runs), report. */
#define _DEFAULT_SOURCE /* madvise, MADV_HUGEPAGE */
#include "cli.h"
#include "cli_mpi.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

static void print_help(FILE *f) {
    fputs("usage: mha bench [--batch B] [--seq N] [--embed E] [--heads H] [options]\n"
          "       mha bench --gemm M N K [--ta 0|1] [--tb 0|1] [--dtype T] [options]\n\n"
          "Times nn.MultiheadAttention's forward (self-attention, batch first) on random data,\n"
          "or the attention core, or the library's matrix product; prints the median time and\n"
          "the rate in GFLOP/s. On a terminal, stderr shows which run is going.\n\n"
          "options:\n"
          "  --batch B, --seq N, --embed E, --heads H   the shape (E divisible by H;\n"
          "                default 1, 512, 512, 8)\n"
          "  --causal      causal mask (top-left); the attention's FLOP count is halved\n"
          "                (the allowed pairs counted with --window or --seq-k)\n"
          "  --backward    time forward + backward\n"
          "  --need-weights  module: also return the attention weights averaged over heads,\n"
          "                [B, N, N] (as nn.MultiheadAttention's need_weights=True,\n"
          "                average_attn_weights=True); the FLOP count is unchanged\n"
          "  --core        time only mha_attn_forward (and mha_attn_backward) on projected\n"
          "                q, k, v [B, H, N, E/H]\n"
          "  --kv-heads G  --core: k and v with G heads, a divisor of H (grouped-query\n"
          "                attention; 1: multi-query); default H\n"
          "  --seq-k S     --core: k and v of S keys (cross-attention; --causal is then\n"
          "                aligned bottom-right: key j <= i + S - N); default N\n"
          "  --head-dim D  --core: the head dim of q, k, v (default E / H; --embed is then H * D)\n"
          "  --window L,R  --core: sliding window, key j of row i allowed iff\n"
          "                i + S - N - L <= j <= i + S - N + R (-1: unbounded); with --causal too\n"
          "  --softcap C   --core: scores capped as C * tanh(s / C) (C > 0)\n"
          "  --alibi       --core: ALiBi, slope 2^(-8 h / H) for head h = 1..H\n"
          "  --decode      --core: one decoding step: mha_attn_kvcache, one query token per\n"
          "                sequence (--tokens T: T), a cache of --seq-k S tokens (default\n"
          "                --seq N), head dim --head-dim D, --kv-heads G (and --window,\n"
          "                --softcap, --alibi); GB/s of K/V read, and the memory read\n"
          "                bandwidth measured in the same run (a streaming read of --bw-mib\n"
          "                MiB after each timed run, default 1024, same threads; the median\n"
          "                of the runs' ratios)\n"
          "  --dtype T     the module (default mode): its parameters, input and output in\n"
          "                f32 (default), bf16 or f16 (mha_config.dtype); --core: q, k, v\n"
          "                and the outputs; with --decode q, the cache and the output (fp32\n"
          "                inside)\n"
          "  --layout L    --decode: the cache's memory, bhsd ([B, G, S, D], default) or\n"
          "                bshd ([B, S, G, D], FlashAttention's: strided views)\n"
          "  --page-size P --decode: paged caches (mha_attn_kvcache_paged): pools of pages of\n"
          "                P rows in the --layout, each sequence's blocks on shuffled pages\n"
          "  --tokens T    --decode: T new tokens per sequence (default 1; speculative\n"
          "                decoding's check of T drafted tokens), causal among themselves\n"
          "                with --causal; the cache holds --seq-k S keys with them\n"
          "  --gemm M N K  time C[M,N] = op(A)[M,K] op(B)[K,N]; --ta/--tb transpose A/B\n"
          "                (default: ta 0, tb 1, as the projections x W^T)\n"
          "  --dtype T     --gemm: A and B in f32 (default), bf16 or f16 (mha_gemm: products\n"
          "                accumulated in float32, C float32)\n"
          "  --threads T   threads (default: all cores)\n"
          "  --isa NAME    kernel path: auto, generic, avx2, avx512\n"
          "  --runs R      timed runs after the warm-up (default 10)\n"
          "  --warmup W    untimed runs first (default: 1, more up to 0.2 s)\n"
          "  --budget S    stop the timed runs once they took S seconds (at least one run)\n"
          "  --dropout P   attention dropout probability (module: training mode), default 0\n"
          "  --json        print one line holding a JSON object\n"
          "  --help        this text\n"
          "\nunder mpirun -n P (when built with MPI), with --core: every rank times its shard\n"
          "of the ring attention (mha_mpi_attn_forward / _backward; --seq N is the whole\n"
          "sequence, split zigzag with --causal) and rank 0 reports the slowest rank's time and\n"
          "each rank's compute and communication wait, work (multiply-adds), bytes sent and\n"
          "peak memory, and the work balance max/mean (in the JSON: \"mpi\"); each rank runs\n"
          "--threads threads (P ranks on C cores want --threads C/P); --runs, --warmup,\n"
          "--budget and --backward must be the same on every rank\n",
          f);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *t, int n) {
    qsort(t, (size_t)n, sizeof(double), cmp_double);
    return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

/* n bytes (at least 1) for a buffer streamed from memory: as mha_kv_cache allocates its
 * caches (2 MiB aligned, huge pages advised on Linux), so that a decoding step on these
 * buffers and the bandwidth measured beside it read memory as a library-owned cache is read. */
static void *stream_alloc(size_t n) {
    const size_t huge = (size_t)1 << 21, r = (n + huge - 1) & ~(huge - 1);
    void *p = r >= n && r > 0 ? aligned_alloc(huge, r) : NULL;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (p) (void)madvise(p, r, MADV_HUGEPAGE);
#endif
    return p;
}

/* A buffer of n floats uniform in [-1, 1) (a fixed LCG: every run sees the same data);
 * stream: allocated by stream_alloc. */
/* a * b, or -1 when either is negative (an overflow before) or the product overflows: a size
 * no buffer can have (rand_buf refuses it, as out of memory) */
static int64_t mul_n(int64_t a, int64_t b) {
    int64_t r;
    return a < 0 || b < 0 || __builtin_mul_overflow(a, b, &r) ? -1 : r;
}

/* n random floats (NULL for n < 0, a size mul_n found overflowing, or one past SIZE_MAX). */
static float *rand_buf(int64_t n, uint32_t seed, int stream) {
    if (n < 0 || (uint64_t)n > SIZE_MAX / sizeof(float)) return NULL;
    const size_t bytes = sizeof(float) * (size_t)(n > 0 ? n : 1);
    float *p = stream ? stream_alloc(bytes) : malloc(bytes);
    if (!p) return NULL;
    for (int64_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        p[i] = (float)((seed >> 8) * (1.0 / 8388608.0) - 1.0);
    }
    return p;
}

typedef struct {
    long long batch, seq, embed, heads, kv_heads, threads, runs, warmup, m, n, k, ta, tb;
    int causal, backward, core, json, gemm, need_weights, threads_given;
    double budget, dropout;
    const char *isa;
    /* --core options of issue 10 (check_core_opts): S, D, the window and score modifiers */
    long long seq_k, head_dim, window_left, window_right;
    const char *window_arg; /* "L,R" as given */
    double softcap;
    int window, alibi, head_dim_given, embed_given;
    /* --decode (the DECODE block) */
    int decode, bshd;
    const char *layout;
    long long bw_mib, page_size; /* page_size -1: contiguous caches */
    long long tokens;            /* new tokens per sequence (--tokens; 1) */
    /* --dtype f32|bf16|f16: the element type of the core's tensors (--decode: q, the caches,
     * the new rows and out) */
    const char *dtype_arg;
    mha_dtype dtype;
} bench_args;

/* One timed step: forward (and backward); returns nonzero status on failure. */
typedef struct {
    mha_ctx *ctx;
    const bench_args *a;
    /* module */
    mha_module *mod;
    mha_tensor x, y, dy, dx, w; /* w: averaged weights [B, N, N] (--need-weights) */
    /* core */
    mha_tensor q, k, v, o, lse, dout, dq, dk, dv;
    mha_attn_params params; /* dropout, softcap */
    mha_mask mask;
    /* gemm */
    float *ga, *gb, *gc;
    /* --decode: the caches, the new token's k and v, each sequence's cached length, and the
     * buffer of the memory bandwidth's streaming read (bw_words 8-byte words) */
    mha_tensor kc, vc, kn, vn;
    int32_t *lens, *table; /* table: --page-size, [B, nblocks] */
    int64_t nblocks;
    uint64_t *bw;
    size_t bw_words;
    /* under mpirun (--core): this rank's ring measurements of the timed runs, [0] forward and
     * [1] backward */
    cli_mpi_tally tally[2];
} bench_state;

/* --decode (the DECODE block at the end of the file) */
static mha_status run_decode(bench_state *s);
static int decode_check_args(const bench_args *a);
static int decode_parse_layout(bench_args *a);
typedef struct bench_plan bench_plan;
static void plan_decode(bench_state *s, bench_plan *p);

static mha_status run_fwd(bench_state *s) {
    const bench_args *a = s->a;
    if (a->decode) return run_decode(s);
    if (a->gemm)
        return mha_gemm(s->ctx, (int)a->ta, (int)a->tb, a->m, a->n, a->k, 1.0f, s->ga,
                        a->ta ? a->m : a->k, s->gb, a->tb ? a->k : a->n, a->dtype, 0.0f, s->gc,
                        a->n);
#ifdef MHA_HAVE_MPI
    if (a->core && cli_mpi_active())
        return cli_mpi_attn_forward(s->ctx, &s->params, &s->q, &s->k, &s->v, &s->mask, &s->o,
                                    a->backward ? &s->lse : NULL, &s->tally[0]);
#endif
    if (a->core)
        return mha_attn_forward(s->ctx, &s->params, &s->q, &s->k, &s->v, &s->mask, &s->o,
                                a->backward ? &s->lse : NULL, NULL);
    mha_forward_opts fo = mha_forward_opts_default();
    fo.save_for_backward = a->backward;
    fo.training = a->dropout > 0;
    return mha_module_forward(s->ctx, s->mod, &fo, &s->x, NULL, NULL, &s->mask, &s->y,
                              a->need_weights ? &s->w : NULL);
}

static mha_status run_bwd(bench_state *s) {
#ifdef MHA_HAVE_MPI
    if (s->a->core && cli_mpi_active())
        return cli_mpi_attn_backward(s->ctx, &s->params, &s->q, &s->k, &s->v, &s->mask, &s->o,
                                     &s->lse, &s->dout, &s->dq, &s->dk, &s->dv, &s->tally[1]);
#endif
    if (s->a->core)
        return mha_attn_backward(s->ctx, &s->params, &s->q, &s->k, &s->v, &s->mask, &s->o, &s->lse,
                                 &s->dout, &s->dq, &s->dk, &s->dv);
    return mha_module_backward(s->ctx, s->mod, &s->dy, &s->dx, NULL, NULL);
}

static int positive(const char *opt, long long v, long long max) {
    if (v >= 1 && v <= max) return 0;
    return cli_usage_error("mha bench --help lists the options", "%s: got %lld, expected 1..%lld",
                           opt, v, max);
}

/* ---- validate: the command line into bench_args (exit 1 on a usage error) ------------------ */

/* "--gemm M N K" takes three values: pulled out of argv (into a) before the common parser,
 * which sees the rest (rest[0 .. *nrest), argv[0] first). */
static int take_gemm(int argc, char **argv, bench_args *a, char **rest, int *nrest) {
    *nrest = 0;
    for (int i = 0; i < argc; i++) {
        if (i > 0 && !strcmp(argv[i], "--gemm")) {
            char *end[3];
            if (i + 3 >= argc)
                return cli_usage_error("mha bench --help lists the options",
                                       "--gemm: expected three sizes M N K");
            a->m = strtoll(argv[i + 1], &end[0], 10);
            a->n = strtoll(argv[i + 2], &end[1], 10);
            a->k = strtoll(argv[i + 3], &end[2], 10);
            if (*end[0] || *end[1] || *end[2] || end[0] == argv[i + 1] || end[1] == argv[i + 2] ||
                end[2] == argv[i + 3])
                return cli_usage_error(
                    "mha bench --help lists the options",
                    "--gemm: got \"%s %s %s\", expected three whole numbers M N K", argv[i + 1],
                    argv[i + 2], argv[i + 3]);
            a->gemm = 1;
            i += 3;
            continue;
        }
        rest[(*nrest)++] = argv[i];
    }
    rest[*nrest] = NULL;
    return 0;
}

/* The values of the options against each other and their ranges. */
static int check_args(const bench_args *a, int warmup_given) {
    const long long big = 1LL << 20;
    int rc;
    if ((rc = positive("--runs", a->runs, 10000))) return rc;
    if (a->budget < 0)
        return cli_usage_error("mha bench --help lists the options",
                               "--budget: got %g, expected seconds >= 0 (0: no limit)", a->budget);
    if (!(a->dropout >= 0 && a->dropout < 1))
        return cli_usage_error("mha bench --help lists the options",
                               "--dropout: got %g, expected a probability in [0, 1)", a->dropout);
    if (warmup_given && (a->warmup < 0 || a->warmup > 10000))
        return cli_usage_error("mha bench --help lists the options",
                               "--warmup: got %lld, expected 0..10000", a->warmup);
    if (a->gemm) {
        if ((rc = positive("--gemm M", a->m, big)) || (rc = positive("--gemm N", a->n, big)) ||
            (rc = positive("--gemm K", a->k, big)))
            return rc;
        if ((a->ta != 0 && a->ta != 1) || (a->tb != 0 && a->tb != 1))
            return cli_usage_error("mha bench --help lists the options",
                                   "--ta/--tb: got %lld/%lld, expected 0 or 1", a->ta, a->tb);
        if (a->core || a->backward || a->causal || a->dropout > 0 || a->need_weights)
            return cli_usage_error("mha bench --help lists the options",
                                   "--gemm: cannot be combined with --core, --backward, --causal, "
                                   "--dropout, --need-weights");
        return 0;
    }
    if ((rc = positive("--batch", a->batch, big)) || (rc = positive("--seq", a->seq, big)) ||
        (rc = positive("--embed", a->embed, big)) || (rc = positive("--heads", a->heads, big)))
        return rc;
    if (a->embed % a->heads && !a->head_dim_given && a->embed_given)
        return cli_usage_error("mha bench --help lists the options",
                               "--embed: got %lld, expected a multiple of --heads %lld", a->embed,
                               a->heads);
    if (a->embed % a->heads && !a->head_dim_given) /* the user never said 512 */
        return cli_usage_error("mha bench --help lists the options",
                               "--heads: got %lld, expected a divisor of %lld (the default "
                               "--embed; give --embed, or --head-dim with --core)",
                               a->heads, a->embed);
    if (a->core && a->need_weights)
        return cli_usage_error("mha bench --help lists the options",
                               "--need-weights: applies to the module, not to --core");
    if (a->kv_heads != a->heads && !a->core)
        return cli_usage_error("mha bench --help lists the options",
                               "--kv-heads: applies to --core (the module has H key/value heads)");
    if (a->kv_heads < 1 || a->heads % a->kv_heads)
        return cli_usage_error("mha bench --help lists the options",
                               "--kv-heads: got %lld, expected a divisor of --heads %lld",
                               a->kv_heads, a->heads);
    return 0;
}

/* --window "L,R" into a->window_left, a->window_right: two whole numbers >= -1. */
static int parse_window(bench_args *a) {
    const char *w = a->window_arg;
    char *end1, *end2 = NULL;
    errno = 0;
    a->window_left = strtoll(w, &end1, 10);
    if (end1 != w && *end1 == ',') a->window_right = strtoll(end1 + 1, &end2, 10);
    if (!end2 || end2 == end1 + 1 || *end2 || errno == ERANGE || a->window_left < -1 ||
        a->window_right < -1)
        return cli_usage_error("mha bench --help lists the options",
                               "--window: got \"%s\", expected L,R: two whole numbers >= -1 "
                               "(-1: unbounded on that side)",
                               w);
    a->window = 1;
    return 0;
}

/* The core's options of issue 10 (--seq-k, --head-dim, --window, --softcap, --alibi): only
 * with --core; fills the defaults S = N and D = E / H (with --head-dim: E = H * D). Runs after
 * check_args (H >= 1, E a multiple of H unless --head-dim is given). */
static int check_core_opts(bench_args *a, const cli_opt *opts, int nopts) {
    static const char *const names[] = {"--seq-k", "--head-dim", "--window", "--softcap",
                                        "--alibi"};
    const long long big = 1LL << 20;
    int rc;
    for (int i = 0; i < (int)(sizeof names / sizeof names[0]); i++)
        if (cli_find(opts, nopts, names[i])->seen && !a->core)
            return cli_usage_error("mha bench --help lists the options", "%s: applies to --core",
                                   names[i]);
    if (a->gemm) return 0;
    if (!cli_find(opts, nopts, "--seq-k")->seen) a->seq_k = a->seq;
    else if ((rc = positive("--seq-k", a->seq_k, big))) return rc;
    if (a->head_dim_given) {
        if ((rc = positive("--head-dim", a->head_dim, 1LL << 16))) return rc;
        if (cli_find(opts, nopts, "--embed")->seen && a->embed != a->heads * a->head_dim)
            return cli_usage_error("mha bench --help lists the options",
                                   "--head-dim: got %lld, expected --embed / --heads = %lld / %lld "
                                   "(or leave --embed out)",
                                   a->head_dim, a->embed, a->heads);
        a->embed = a->heads * a->head_dim;
    } else {
        a->head_dim = a->embed / a->heads;
    }
    if (a->window_arg && (rc = parse_window(a))) return rc;
    if (cli_find(opts, nopts, "--softcap")->seen && !cli_positive_float(a->softcap))
        return cli_usage_error("mha bench --help lists the options",
                               "--softcap: got %g, expected a number > 0 that a float holds "
                               "(%g to %g: the scores' cap)",
                               a->softcap, (double)FLT_TRUE_MIN, (double)FLT_MAX);
    return 0;
}

/* --dtype into a->dtype (f32 when absent): the module's, the core's, --decode's or --gemm's
 * element type. */
static int parse_dtype(bench_args *a) {
    a->dtype = MHA_DTYPE_F32;
    if (a->dtype_arg && !cli_dtype_parse(a->dtype_arg, &a->dtype))
        return cli_usage_error("mha bench --help lists the options",
                               "--dtype: got \"%s\", expected f32, bf16 or f16", a->dtype_arg);
    return 0;
}

/* Under mpirun the bench times the ring attention core (mha_mpi_attn_forward / _backward) on
 * each rank's shard of the sequence: --core, float32, self-attention-shaped (no --seq-k),
 * without the options the ring does not split (window, softcap, ALiBi) or a step of its own. */
static int check_mpi_args(const bench_args *a, const cli_opt *opts, int nopts) {
    static const char *const not_split[] = {"--seq-k",  "--window", "--softcap",     "--alibi",
                                            "--decode", "--layout", "--need-weights"};
    const char *hint = "under mpirun: mha bench --core [--causal] [--backward] [--kv-heads G] "
                       "[--head-dim D] [--dropout P] ...";
    if (!cli_mpi_active()) return 0;
    if (a->gemm || !a->core)
        return cli_usage_error(hint, "under mpirun mha bench times the ring attention core: "
                                     "--core is required (not the module, not --gemm)");
    for (size_t i = 0; i < sizeof not_split / sizeof not_split[0]; i++)
        if (cli_find(opts, nopts, not_split[i])->seen)
            return cli_usage_error(hint,
                                   "%s: not supported under mpirun (the ring attention "
                                   "core: causal or not, GQA, dropout)",
                                   not_split[i]);
    if (a->dtype != MHA_DTYPE_F32)
        return cli_usage_error(hint, "--dtype %s: not supported under mpirun (float32 only)",
                               a->dtype_arg);
    return 0;
}

/* Under mpirun (collective, after every rank parsed its command line): the timed runs are
 * collectives (measure), so every rank must be given the same --runs, --warmup, --budget and
 * --backward; an MPMD launch that gives them differently would leave ranks waiting for each
 * other. A usage error (on every rank) when they differ. */
static int check_mpi_timing(const bench_args *a) {
    int same = cli_mpi_same((double)a->runs);
    same &= cli_mpi_same((double)a->warmup);
    same &= cli_mpi_same(a->budget);
    same &= cli_mpi_same(a->backward);
    if (same) return 0;
    return cli_usage_error("mpirun -n P mha bench ... gives every rank the same options",
                           "--runs, --warmup, --budget, --backward: the ranks were given "
                           "different values (every rank times the same runs)");
}

/* Parses and checks the command line. Returns 0, CLI_HELP (help printed) or a usage error. */
static int parse_args(int argc, char **argv, bench_args *a) {
    *a = (bench_args){
        .batch = 1, .seq = 512, .embed = 512, .heads = 8, .runs = 10, .tb = 1, .warmup = -1};
    a->bw_mib = 1024;  /* --decode */
    a->page_size = -1; /* --decode: absent (contiguous caches) */
    a->tokens = 1;     /* --decode */
    char **rest = malloc(sizeof(char *) * (size_t)(argc + 1));
    if (!rest) return cli_fail("out of memory");
    int nrest, rc = take_gemm(argc, argv, a, rest, &nrest);
    cli_opt opts[] = {
        {"--batch", CLI_OPT_INT, &a->batch, 0},
        {"--seq", CLI_OPT_INT, &a->seq, 0},
        {"--embed", CLI_OPT_INT, &a->embed, 0},
        {"--heads", CLI_OPT_INT, &a->heads, 0},
        {"--kv-heads", CLI_OPT_INT, &a->kv_heads, 0},
        {"--causal", CLI_OPT_FLAG, &a->causal, 0},
        {"--backward", CLI_OPT_FLAG, &a->backward, 0},
        {"--core", CLI_OPT_FLAG, &a->core, 0},
        {"--threads", CLI_OPT_INT, &a->threads, 0},
        {"--json", CLI_OPT_FLAG, &a->json, 0},
        {"--isa", CLI_OPT_STRING, &a->isa, 0},
        {"--runs", CLI_OPT_INT, &a->runs, 0},
        {"--ta", CLI_OPT_INT, &a->ta, 0},
        {"--tb", CLI_OPT_INT, &a->tb, 0},
        {"--warmup", CLI_OPT_INT, &a->warmup, 0},
        {"--budget", CLI_OPT_FLOAT, &a->budget, 0},
        {"--dropout", CLI_OPT_FLOAT, &a->dropout, 0},
        {"--need-weights", CLI_OPT_FLAG, &a->need_weights, 0},
        {"--seq-k", CLI_OPT_INT, &a->seq_k, 0},
        {"--head-dim", CLI_OPT_INT, &a->head_dim, 0},
        {"--window", CLI_OPT_STRING, &a->window_arg, 0},
        {"--softcap", CLI_OPT_FLOAT, &a->softcap, 0},
        {"--alibi", CLI_OPT_FLAG, &a->alibi, 0},
        {"--decode", CLI_OPT_FLAG, &a->decode, 0},
        {"--layout", CLI_OPT_STRING, &a->layout, 0},
        {"--bw-mib", CLI_OPT_INT, &a->bw_mib, 0},
        {"--page-size", CLI_OPT_INT, &a->page_size, 0},
        {"--tokens", CLI_OPT_INT, &a->tokens, 0},
        {"--dtype", CLI_OPT_STRING, &a->dtype_arg, 0},
    };
    int nopts = (int)(sizeof opts / sizeof opts[0]);
    if (!rc) rc = cli_parse(nrest, rest, opts, nopts);
    free(rest);
    if (rc == CLI_HELP) {
        print_help(stdout);
        return CLI_HELP;
    }
    if (rc) return rc;
    a->threads_given = cli_find(opts, nopts, "--threads")->seen > 0;
    if (!cli_find(opts, nopts, "--kv-heads")->seen) a->kv_heads = a->heads;
    a->head_dim_given = cli_find(opts, nopts, "--head-dim")->seen > 0;
    a->embed_given = cli_find(opts, nopts, "--embed")->seen > 0;
    if ((rc = check_args(a, cli_find(opts, nopts, "--warmup")->seen > 0))) return rc;
    static const char *const shape_opts[] = {"--batch", "--seq", "--embed", "--heads"};
    for (size_t i = 0; a->gemm && i < sizeof shape_opts / sizeof shape_opts[0]; i++)
        if (cli_find(opts, nopts, shape_opts[i])->seen) /* never silently ignored */
            return cli_usage_error("mha bench --help lists the options",
                                   "%s: applies to the module and the core, not to --gemm M N K",
                                   shape_opts[i]);
    if ((rc = check_core_opts(a, opts, nopts))) return rc;
    if ((rc = decode_check_args(a))) return rc;
    if ((rc = parse_dtype(a))) return rc;
    if ((rc = decode_parse_layout(a))) return rc;
    return check_mpi_args(a, opts, nopts);
}

/* ---- plan: buffers, tensors, the module and the FLOP counts --------------------------------- */

struct bench_plan {
    double flops_fwd, flops_bwd;
    float *bufs[24]; /* owned */
    int nb, oom;
};

/* A random buffer of n floats, owned by the plan. */
static float *plan_buf_as(bench_plan *p, int64_t n, uint32_t seed, int stream) {
    float *b = rand_buf(n, seed, stream);
    p->oom |= !b;
    return p->bufs[p->nb++] = b;
}
static float *plan_buf(bench_plan *p, int64_t n, uint32_t seed) {
    return plan_buf_as(p, n, seed, 0);
}

/* n random elements of --dtype in plan buffers (stream: allocated as the decode caches are):
 * plan_buf's floats, or for bf16 / f16 those converted by mha_tensor_convert. */
static void *plan_elems(bench_state *s, bench_plan *p, int64_t n, uint32_t seed, int stream) {
    float *b = plan_buf_as(p, n, seed, stream);
    if (!b || s->a->dtype == MHA_DTYPE_F32) return b;
    uint16_t *h = (uint16_t *)plan_buf_as(p, n / 2 + 1, 0, stream);
    const int64_t sh[1] = {n};
    mha_tensor f = mha_tensor_make(b, 1, sh), t = mha_tensor_typed(h, s->a->dtype, 1, sh, NULL);
    p->oom |= !h || mha_tensor_convert(s->ctx, &f, &t) != MHA_OK;
    return h;
}

/* A random contiguous tensor of --dtype and shape sh[0 .. nd-1] in a plan buffer. */
static mha_tensor plan_tensor(bench_state *s, bench_plan *p, int nd, const int64_t *sh,
                              uint32_t seed) {
    int64_t n = 1;
    for (int d = 0; d < nd; d++) n = mul_n(n, sh[d]);
    return mha_tensor_typed(plan_elems(s, p, n, seed, 0), s->a->dtype, nd, sh, NULL);
}

/* q [B, H, N, D], k and v [B, G, S, D] (G = --kv-heads, S = --seq-k, D = --head-dim; under
 * mpirun N and S are this rank's shard), of --dtype (lse float32). */
static void plan_core(bench_state *s, bench_plan *p, int64_t B, int64_t H, int64_t N, int64_t S,
                      int64_t D) {
    const int64_t G = s->a->kv_heads;
    int64_t sh[4] = {B, H, N, D}, sk[4] = {B, G, S, D}, sl[3] = {B, H, N};
    s->q = plan_tensor(s, p, 4, sh, 1);
    s->k = plan_tensor(s, p, 4, sk, 2);
    s->v = plan_tensor(s, p, 4, sk, 3);
    s->o = plan_tensor(s, p, 4, sh, 4);
    s->lse = mha_tensor_make(plan_buf(p, mul_n(mul_n(B, H), N), 5), 3, sl);
    if (s->a->backward) {
        s->dout = plan_tensor(s, p, 4, sh, 6);
        s->dq = plan_tensor(s, p, 4, sh, 7);
        s->dk = plan_tensor(s, p, 4, sk, 8);
        s->dv = plan_tensor(s, p, 4, sk, 9);
    }
}

static void plan_module(bench_state *s, bench_plan *p, int64_t B, int64_t N, int64_t E) {
    int64_t sh[3] = {B, N, E}, shw[3] = {B, N, N};
    s->x = plan_tensor(s, p, 3, sh, 1);
    s->y = plan_tensor(s, p, 3, sh, 2);
    if (s->a->need_weights) s->w = mha_tensor_make(plan_buf(p, mul_n(mul_n(B, N), N), 10), 3, shw);
    if (s->a->backward) {
        s->dy = plan_tensor(s, p, 3, sh, 3);
        s->dx = plan_tensor(s, p, 3, sh, 4);
    }
}

/* The core's mask and parameters beyond the causal flag: causal aligned bottom-right when
 * S != N, the window, the softcap, and ALiBi's slopes 2^(-8 h / H), h = 1..H (Press et al.'s
 * geometric sequence; a buffer of the plan). */
static void plan_core_mask(bench_state *s, bench_plan *p) {
    const bench_args *a = s->a;
    if (a->causal && a->seq_k != a->seq) s->mask.causal = MHA_CAUSAL_BOTTOM_RIGHT;
    s->mask.window = a->window;
    s->mask.window_left = a->window_left;
    s->mask.window_right = a->window_right;
    s->params.softcap = (float)a->softcap;
    if (a->alibi) {
        float *slopes = plan_buf(p, a->heads, 11);
        for (long long h = 0; slopes && h < a->heads; h++)
            slopes[h] = (float)exp2(-8.0 * (double)(h + 1) / (double)a->heads);
        s->mask.alibi_slopes = slopes;
    }
}

/* The (query, key) pairs the attention computes, for the FLOP count: N * N, halved with
 * --causal (the nominal count BENCHMARKS.md uses); with --window or --seq-k S != N, the exact
 * number of pairs (i, j) the causal mask and the window allow. */
static double attn_pairs(const bench_args *a) {
    const long long L = a->seq, S = a->seq_k;
    if (!a->window && S == L) return (double)L * (double)L * (a->causal ? 0.5 : 1.0);
    double n = 0;
    for (long long i = 0; i < L; i++) {
        long long d = i + S - L, lo = 0, hi = S - 1; /* d: row i's diagonal key */
        if (a->causal && d < hi) hi = d;
        if (a->window && a->window_left >= 0 && d - a->window_left > lo) lo = d - a->window_left;
        if (a->window && a->window_right >= 0 && d + a->window_right < hi) hi = d + a->window_right;
        if (hi >= lo) n += (double)(hi - lo + 1);
    }
    return n;
}

/* Allocates what the measured step touches and counts its FLOPs (see the top of this file).
 * Returns 0, or 2 after printing. */
static int plan_bench(bench_state *s, bench_plan *p) {
    const bench_args *a = s->a;
    const int64_t B = a->batch, N = a->seq, E = a->embed, H = a->heads, D = a->head_dim;
    s->mask = mha_mask_default();
    s->params = mha_attn_params_default();
    s->params.dropout_p = (float)a->dropout;
    if (a->causal) s->mask.causal = MHA_CAUSAL_TOP_LEFT;
    if (a->gemm) {
        const int64_t sa[4] = {1, 1, 1, mul_n(a->m, a->k)}, sb[4] = {1, 1, 1, mul_n(a->k, a->n)};
        s->ga = plan_tensor(s, p, 4, sa, 1).data; /* of --dtype (mha_gemm's A and B) */
        s->gb = plan_tensor(s, p, 4, sb, 2).data;
        s->gc = plan_buf(p, mul_n(a->m, a->n), 3);
        p->flops_fwd = 2.0 * (double)a->m * (double)a->n * (double)a->k;
    } else {
        double F = 4.0 * B * H * D * attn_pairs(a);
        double P = 2.0 * B * N * E * 3.0 * E + 2.0 * B * N * E * E;
        if (a->decode) plan_decode(s, p), plan_core_mask(s, p);
        else if (a->core) {
            int64_t Nr = N, Sr = a->seq_k;
#ifdef MHA_HAVE_MPI
            if (cli_mpi_active() && cli_mpi_shard_len(s->ctx, &s->mask, N, "--seq", &Nr))
                return CLI_EXIT_RUNTIME;
            if (cli_mpi_active()) Sr = Nr;
#endif
            plan_core(s, p, B, H, Nr, Sr, D), plan_core_mask(s, p);
        } else plan_module(s, p, B, N, E);
        p->flops_fwd = a->core ? F : F + P;
        p->flops_bwd = a->core ? 2.5 * F : 2.0 * P + 2.5 * F;
    }
    if (p->oom) return cli_fail("out of memory for the benchmark's buffers");
    if (!a->gemm && !a->core) {
        mha_config cfg = mha_config_default(E, H);
        cfg.dropout = (float)a->dropout;
        cfg.dtype = a->dtype;
        if (mha_module_create(s->ctx, &cfg, &s->mod) != MHA_OK)
            return cli_fail_lib(s->ctx, "mha_module_create");
    }
    return 0;
}

/* ---- measure: warm-up, then the timed runs, with progress on a terminal ------------------- */

/* A benchmark at a large size runs for a minute: on a terminal, stderr shows what it is doing
 * (one line, rewritten in place and erased at the end); elsewhere nothing, so that logs and
 * pipes stay clean. Printed between runs, never inside a timed interval. */
typedef struct {
    int on;
} progress;

static void progress_say(const progress *pr, const char *fmt, ...) CLI_PRINTF(2, 3);
static void progress_say(const progress *pr, const char *fmt, ...) {
    if (!pr->on) return;
    va_list ap;
    va_start(ap, fmt);
    fputs("\r\033[Kmha bench: ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fflush(stderr);
}

static void progress_end(const progress *pr) {
    if (!pr->on) return;
    fputs("\r\033[K", stderr);
    fflush(stderr);
}

/* A library failure while the progress line may be showing: the line goes first. */
static int lib_failed(const progress *pr, const mha_ctx *ctx, const char *what) {
    progress_end(pr);
    return cli_fail_lib(ctx, what);
}

typedef struct {
    double *tf, *tb, *tt; /* forward, backward and total seconds of each timed run */
    double *tm;           /* --decode: seconds of the streaming read after each timed run */
    int runs;
} bench_times;

static double stream_pass(const bench_state *s);

/* Warm-up (--warmup runs, or one run and more for short ones: up to 0.2 s), then up to
 * --runs timed runs (fewer once --budget seconds are spent). Under mpirun every rank makes the
 * same decisions (the slowest rank's clock) and starts each timed run with the others; a run
 * takes the slowest rank's time. Returns 0, or 2 after printing. */
static int measure(bench_state *s, const progress *pr, bench_times *t) {
    const bench_args *a = s->a;
    const double warm_from = cli_now_s();
    for (int w = 0;
         a->warmup >= 0 ? w < a->warmup
                        : (w < 1 || (w < 20 && cli_mpi_max(cli_now_s() - warm_from) < 0.2));
         w++) {
        progress_say(pr, "warm-up run %d", w + 1);
        if (run_fwd(s) != MHA_OK) return lib_failed(pr, s->ctx, "forward");
        if (a->backward && run_bwd(s) != MHA_OK) return lib_failed(pr, s->ctx, "backward");
    }
    double timed_from = cli_now_s();
    t->runs = 0;
    memset(s->tally, 0, sizeof s->tally); /* the ring's measurements of the timed runs only */
    for (int r = 0; r < a->runs; r++) {
        if (r > 0 && a->budget > 0 && cli_mpi_max(cli_now_s() - timed_from) > a->budget) break;
        if (r == 0) progress_say(pr, "timed run 1 of %lld", a->runs);
        else
            progress_say(pr, "timed run %d of %lld (the last took %.3f ms)", r + 1, a->runs,
                         t->tt[r - 1] * 1e3);
        t->runs++;
        cli_mpi_barrier();
        double t0 = cli_now_s();
        mha_status st = run_fwd(s);
        double t1 = cli_now_s();
        if (st == MHA_OK && a->backward) st = run_bwd(s);
        double t2 = cli_now_s();
        if (st != MHA_OK) return lib_failed(pr, s->ctx, "bench");
        t->tf[r] = cli_mpi_max(t1 - t0), t->tb[r] = cli_mpi_max(t2 - t1);
        t->tt[r] = cli_mpi_max(t2 - t0);
        if (s->bw) t->tm[r] = stream_pass(s);
    }
    return 0;
}

/* ---- report: medians and rates, as text or one JSON line ---------------------------------- */

/* Under mpirun: every rank's ring measurements and the work balance (text lines, or a JSON
 * fragment); nothing otherwise. */
static int report_mpi(const bench_state *s, int json) {
#ifdef MHA_HAVE_MPI
    if (cli_mpi_active()) return cli_mpi_bench_report(s->tally, s->a->backward, s->a->causal, json);
#endif
    (void)s, (void)json;
    return 0;
}

/* The core's shape and options of issue 10: JSON fields (",\"seq_k\":..." inside the object)
 * or, for the text line, the ones that differ from the defaults. */
static void report_core_opts(const bench_args *a) {
    if (a->json) {
        printf(",\"seq_k\":%lld,\"head_dim\":%lld,\"window\":", a->seq_k, a->head_dim);
        if (a->window) printf("[%lld,%lld]", a->window_left, a->window_right);
        else printf("null");
        printf(",\"softcap\":%g,\"alibi\":%s,\"dtype\":\"%s\"", a->softcap,
               a->alibi ? "true" : "false", a->dtype_arg ? a->dtype_arg : "f32");
        return;
    }
    if (a->dtype != MHA_DTYPE_F32) printf(" %s", a->dtype_arg);
    if (a->seq_k != a->seq) printf(" S %lld", a->seq_k);
    if (a->head_dim_given) printf(" D %lld", a->head_dim);
    if (a->window) printf(" window (%lld, %lld)", a->window_left, a->window_right);
    if (a->softcap > 0) printf(" softcap %g", a->softcap);
    if (a->alibi) printf(" alibi");
}

/* The report; under mpirun with the ranks' own measurements (cli_mpi_bench_report, collective).
 * Returns 0, or 2 after printing. */
static int report(const bench_state *s, const bench_plan *p, bench_times *t) {
    const bench_args *a = s->a;
    double med = median(t->tt, t->runs), med_f = median(t->tf, t->runs);
    double med_b = a->backward ? median(t->tb, t->runs) : 0;
    double flops = p->flops_fwd + (a->backward ? p->flops_bwd : 0);
    double gflops = flops / med * 1e-9;
    const char *what = a->gemm   ? "gemm"
                       : a->core ? (a->backward ? "core_fwd_bwd" : "core_fwd")
                                 : (a->backward ? "module_fwd_bwd" : "module_fwd");
    const char *isa = mha_isa_name(mha_ctx_isa(s->ctx));
    int threads = mha_ctx_threads(s->ctx);
    if (a->json) {
        if (a->gemm)
            printf("{\"what\":\"gemm\",\"M\":%lld,\"N\":%lld,\"K\":%lld,\"ta\":%lld,\"tb\":%lld,"
                   "\"dtype\":\"%s\",",
                   a->m, a->n, a->k, a->ta, a->tb, a->dtype_arg ? a->dtype_arg : "f32");
        else {
            printf("{\"what\":\"%s\",\"batch\":%lld,\"seq\":%lld,\"embed\":%lld,\"heads\":%lld,"
                   "\"kv_heads\":%lld,\"causal\":%s,\"backward\":%s,\"core\":%s,"
                   "\"need_weights\":%s,\"dropout\":%g",
                   what, a->batch, a->seq, a->embed, a->heads, a->kv_heads,
                   a->causal ? "true" : "false", a->backward ? "true" : "false",
                   a->core ? "true" : "false", a->need_weights ? "true" : "false", a->dropout);
            report_core_opts(a);
            printf(",");
        }
        printf("\"isa\":\"%s\",\"threads\":%d,\"runs\":%d,\"median_ms\":%.4f,\"gflops\":%.3f,"
               "\"fwd_median_ms\":%.4f,\"fwd_gflops\":%.3f",
               isa, threads, t->runs, med * 1e3, gflops, med_f * 1e3, p->flops_fwd / med_f * 1e-9);
        if (a->backward)
            printf(",\"bwd_median_ms\":%.4f,\"bwd_gflops\":%.3f", med_b * 1e3,
                   p->flops_bwd / med_b * 1e-9);
        printf(",\"flops\":%.6g", flops);
        int rc = report_mpi(s, 1);
        printf("}\n");
        return rc;
    }
    if (a->gemm)
        printf("gemm M %lld N %lld K %lld (ta %lld, tb %lld, %s)", a->m, a->n, a->k, a->ta, a->tb,
               a->dtype_arg ? a->dtype_arg : "f32");
    else {
        printf("%s B %lld N %lld E %lld H %lld%s%s%s", what, a->batch, a->seq, a->embed, a->heads,
               a->kv_heads != a->heads ? " (GQA)" : "", a->causal ? " causal" : "",
               a->need_weights ? " need_weights" : "");
        if (a->dropout > 0) printf(" dropout %g", a->dropout);
        report_core_opts(a);
    }
    printf(", isa %s, %d threads: median %.3f ms of %d runs, %.1f GFLOP/s\n", isa, threads,
           med * 1e3, t->runs, gflops);
    if (a->backward)
        printf("  forward %.3f ms (%.1f GFLOP/s), backward %.3f ms (%.1f GFLOP/s)\n", med_f * 1e3,
               p->flops_fwd / med_f * 1e-9, med_b * 1e3, p->flops_bwd / med_b * 1e-9);
    return report_mpi(s, 0);
}

/* ---- DECODE: one decoding step against a cache, and the memory read bandwidth -------------- */

/* The decode step's sizes: S cached keys (--seq-k, default --seq), head dim D. */
static void decode_dims(const bench_args *a, int64_t *S, int64_t *D) {
    *S = a->seq_k;
    *D = a->head_dim;
}

/* Bytes of K and V rows one step reads: every key and value of every sequence the new tokens
 * (T of them, at S - T .. S - 1) may see, in the cache's dtype: all S, or with --window L,R
 * (L >= 0) the last L + T (the step skips the rest). */
static double decode_bytes(const bench_args *a) {
    int64_t S, D;
    decode_dims(a, &S, &D);
    /* a window reads the keys some query row may use: the T new tokens at S - T .. S - 1 see
     * from S - T - left on */
    if (a->window && a->window_left >= 0 && a->window_left + a->tokens < S)
        S = a->window_left + a->tokens;
    return (double)a->batch * (double)a->kv_heads * (double)S * 2.0 * (double)D *
           (double)mha_dtype_size(a->dtype);
}

static int decode_check_args(const bench_args *a) {
    if (a->layout && !a->decode)
        return cli_usage_error("mha bench --help lists the options",
                               "--layout: applies to --decode");
    if (a->page_size != -1 && !a->decode)
        return cli_usage_error("mha bench --help lists the options",
                               "--page-size: applies to --decode");
    if (a->tokens != 1 && !a->decode)
        return cli_usage_error("mha bench --help lists the options",
                               "--tokens: applies to --decode");
    if (a->decode && (a->tokens < 1 || a->tokens > (a->seq_k < 1024 ? a->seq_k : 1024)))
        return cli_usage_error("mha bench --help lists the options",
                               "--tokens: got %lld, expected 1..%lld (at most --seq-k and 1024)",
                               a->tokens, a->seq_k < 1024 ? a->seq_k : 1024);
    if (a->page_size != -1 && (a->page_size < 1 || a->page_size > (1LL << 30)))
        return cli_usage_error("mha bench --help lists the options",
                               "--page-size: got %lld, expected 1..%lld (rows per page)",
                               a->page_size, 1LL << 30);
    if (!a->decode) return 0;
    if (!a->core || a->gemm)
        return cli_usage_error("mha bench --help lists the options",
                               "--decode: applies to --core (mha bench --core --decode ...)");
    if (a->backward || a->dropout > 0 || a->need_weights)
        return cli_usage_error("mha bench --help lists the options",
                               "--decode: cannot be combined with --backward, --dropout, "
                               "--need-weights (a decoding step is a forward without dropout)");
    if (a->bw_mib < 1 || a->bw_mib > (1LL << 20))
        return cli_usage_error("mha bench --help lists the options",
                               "--bw-mib: got %lld, expected 1..%lld", a->bw_mib, 1LL << 20);
    return 0;
}

/* "bhsd" or "bshd" into a->bshd. */
static int decode_parse_layout(bench_args *a) {
    if (!a->layout || !strcmp(a->layout, "bhsd")) return 0;
    if (!strcmp(a->layout, "bshd")) return a->bshd = 1, 0;
    return cli_usage_error("mha bench --help lists the options",
                           "--layout: got \"%s\", expected bhsd or bshd", a->layout);
}

/* A [B, G, R, D] view of the buffer (elements of dt): contiguous, or of [B, R, G, D] memory
 * (bshd). */
static mha_tensor decode_view(void *buf, mha_dtype dt, int64_t B, int64_t G, int64_t R, int64_t D,
                              int bshd) {
    int64_t sh[4] = {B, G, R, D}, st[4] = {mul_n(R, mul_n(G, D)), D, mul_n(G, D), 1};
    return mha_tensor_typed(buf, dt, 4, sh, bshd ? st : NULL);
}

static void plan_decode(bench_state *s, bench_plan *p) {
    const bench_args *a = s->a;
    int64_t S, D;
    decode_dims(a, &S, &D);
    const int64_t B = a->batch, H = a->heads, G = a->kv_heads, T = a->tokens;
    const mha_dtype dt = a->dtype; /* of q, the caches, the new rows and out */
    int64_t sq[4] = {B, H, T, D};
    s->q = plan_tensor(s, p, 4, sq, 1);
    s->o = plan_tensor(s, p, 4, sq, 4);
    /* the caches: [B, G, S, D], or (--page-size P) pools of B * nblocks pages [., G, P, D] */
    const int64_t P = a->page_size > 0 ? a->page_size : 0, nb = P ? (S + P - 1) / P : 0,
                  np = P ? mul_n(B, nb) : B;
    const int64_t R = P ? P : S;
    s->kc = decode_view(plan_elems(s, p, mul_n(mul_n(np, G), mul_n(R, D)), 2, 1), dt, np, G, R, D,
                        a->bshd);
    s->vc = decode_view(plan_elems(s, p, mul_n(mul_n(np, G), mul_n(R, D)), 3, 1), dt, np, G, R, D,
                        a->bshd);
    if (P) { /* block i of sequence b on a page of a seeded shuffle */
        s->nblocks = nb;
        s->table = (int32_t *)plan_buf(p, np, 0); /* np int32 in a plan buffer of np floats */
        uint64_t x = 0x9E3779B97F4A7C15ull;
        for (int64_t i = 0; s->table && i < np; i++) s->table[i] = (int32_t)i;
        for (int64_t i = np - 1; s->table && i > 0; i--) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            const int64_t j = (int64_t)((x >> 33) % (uint64_t)(i + 1));
            const int32_t t = s->table[i];
            s->table[i] = s->table[j], s->table[j] = t;
        }
    }
    s->kn = decode_view(plan_elems(s, p, mul_n(mul_n(B, G), mul_n(T, D)), 5, 0), dt, B, G, T, D,
                        a->bshd);
    s->vn = decode_view(plan_elems(s, p, mul_n(mul_n(B, G), mul_n(T, D)), 6, 0), dt, B, G, T, D,
                        a->bshd);
    s->lens = (int32_t *)plan_buf(p, B, 0); /* B int32 in a plan buffer of B floats */
    for (int64_t b = 0; s->lens && b < B; b++) s->lens[b] = (int32_t)(S - T);
    s->bw_words = (size_t)a->bw_mib << 17;
    s->bw = stream_alloc(s->bw_words * sizeof(uint64_t));
    p->oom |= !s->bw;
    if (!s->bw) return;
    const int nt = mha_ctx_threads(s->ctx);
    (void)nt;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (size_t i = 0; i < s->bw_words; i++) s->bw[i] = i; /* the pages exist before timing */
}

static mha_status run_decode(bench_state *s) {
    if (s->table)
        return mha_attn_kvcache_paged(s->ctx, &s->params, &s->q, &s->kc, &s->vc, s->table,
                                      s->nblocks, &s->kn, &s->vn, s->lens, &s->mask, &s->o, NULL);
    return mha_attn_kvcache(s->ctx, &s->params, &s->q, &s->kc, &s->vc, &s->kn, &s->vn, s->lens,
                            &s->mask, &s->o, NULL);
}

/* One streaming read of n words on nt threads (each a contiguous part). */
static uint64_t stream_read(const uint64_t *w, size_t n, int nt) {
    uint64_t acc = 0;
    (void)nt;
#pragma omp parallel for num_threads(nt) schedule(static) reduction(^ : acc)
    for (size_t i = 0; i < n; i += 4) acc ^= w[i] ^ w[i + 1] ^ w[i + 2] ^ w[i + 3];
    return acc;
}

/* One timed streaming read of the bandwidth buffer on the call's threads: seconds. */
static double stream_pass(const bench_state *s) {
    static volatile uint64_t sink;
    const double t0 = cli_now_s();
    sink ^= stream_read(s->bw, s->bw_words, mha_ctx_threads(s->ctx));
    return cli_now_s() - t0;
}

static void report_decode(const bench_state *s, bench_times *t) {
    const bench_args *a = s->a;
    int64_t S, D;
    decode_dims(a, &S, &D);
    const double bw_bytes = (double)s->bw_words * sizeof(uint64_t);
    /* each run's K/V rate over that of the streaming read right after it (a neighbour's burst
     * slows both), then their median (before median() sorts the times) */
    for (int r = 0; r < t->runs; r++) t->tf[r] = decode_bytes(a) / t->tt[r] / (bw_bytes / t->tm[r]);
    const double ratio = median(t->tf, t->runs);
    const double med = median(t->tt, t->runs), kv = decode_bytes(a) / med * 1e-9;
    const double mem = bw_bytes / median(t->tm, t->runs) * 1e-9;
    const int threads = mha_ctx_threads(s->ctx);
    const char *isa = mha_isa_name(mha_ctx_isa(s->ctx)), *layout = a->bshd ? "bshd" : "bhsd";
    const char *dt = a->dtype_arg ? a->dtype_arg : "f32";
    if (a->json) {
        printf("{\"what\":\"core_decode\",\"batch\":%lld,\"heads\":%lld,\"kv_heads\":%lld,"
               "\"tokens\":%lld,\"layout\":\"%s\",\"page_size\":%lld,\"causal\":%s",
               a->batch, a->heads, a->kv_heads, a->tokens, layout,
               a->page_size > 0 ? a->page_size : 0, a->causal ? "true" : "false");
        report_core_opts(a); /* S, D and what changes what a step reads (the window) */
        printf(
            ",\"isa\":\"%s\",\"threads\":%d,\"runs\":%d,\"median_ms\":%.4f,\"kv_bytes\":%.6g,"
            "\"kv_gbps\":%.3f,\"mem_read_gbps\":%.3f,\"mem_read_mib\":%lld,\"kv_vs_mem\":%.4f}\n",
            isa, threads, t->runs, med * 1e3, decode_bytes(a), kv, mem, a->bw_mib, ratio);
        return;
    }
    char paged[96] = "";
    if (a->page_size > 0) snprintf(paged, sizeof paged, ", pages of %lld rows", a->page_size);
    if (a->tokens > 1)
        snprintf(paged + strlen(paged), sizeof paged - strlen(paged), ", %lld new tokens",
                 a->tokens);
    printf("core_decode B %lld S %lld H %lld G %lld D %lld, layout %s%s, dtype %s, isa %s, %d "
           "threads: median %.4f ms of %d runs, K/V read %.2f GB/s\n",
           a->batch, (long long)S, a->heads, a->kv_heads, (long long)D, layout, paged, dt, isa,
           threads, med * 1e3, t->runs, kv);
    printf("  memory read bandwidth %.2f GB/s (%lld MiB streamed, %d threads): K/V read at "
           "%.1f%% of it\n",
           mem, a->bw_mib, threads, 100.0 * ratio);
}

static int bench(int argc, char **argv) {
    bench_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc == CLI_HELP) return CLI_EXIT_OK;
    /* under mpirun each phase ends with every rank agreeing (cli_mpi.h): one error, one code */
    if ((rc = cli_mpi_agree(rc))) return rc;
    if ((rc = cli_mpi_agree(check_mpi_timing(&a)))) return rc;
    mha_ctx *ctx = NULL;
    rc = cli_ctx_create(a.threads_given ? &a.threads : NULL, a.isa, &ctx);
    if ((rc = cli_mpi_agree(rc))) {
        mha_ctx_free(ctx);
        return rc;
    }
    progress pr = {isatty(STDERR_FILENO)};
    bench_state s = {.ctx = ctx, .a = &a};
    bench_plan p = {0};
    size_t n = (size_t)a.runs;
    bench_times t = {malloc(n * sizeof(double)), malloc(n * sizeof(double)),
                     malloc(n * sizeof(double)), malloc(n * sizeof(double)), 0};
    if (!t.tf || !t.tb || !t.tt || !t.tm)
        rc = cli_fail("out of memory for the benchmark's timings");
    if (!rc) rc = plan_bench(&s, &p);
    if (!(rc = cli_mpi_agree(rc))) rc = cli_mpi_agree(measure(&s, &pr, &t));
    progress_end(&pr);
    if (!rc && a.decode) report_decode(&s, &t);
    else if (!rc) rc = report(&s, &p, &t);
    mha_module_free(s.mod);
    for (int i = 0; i < p.nb; i++) free(p.bufs[i]);
    free(t.tf), free(t.tb), free(t.tt), free(t.tm), free(s.bw);
    mha_ctx_free(ctx);
    return rc;
}

/* Under mpirun (cli_mpi.h) every rank times its shard of the ring (--core). */
int mha_cmd_bench(int argc, char **argv) {
    int rc = cli_mpi_begin();
    return cli_mpi_end(rc ? rc : bench(argc, argv));
}
