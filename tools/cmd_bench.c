/* cmd_bench.c - `mha bench`: times the module, the attention core, or the gemm on random data.
 *
 *   mha bench --batch B --seq N --embed E --heads H [--causal] [--backward] [--core]
 *             [--need-weights] [--threads T] [--isa NAME] [--runs R] [--json]
 *   mha bench --gemm M N K [--ta 0|1] [--tb 0|1] [--threads T] [--isa NAME] [--runs R] [--json]
 *
 * Each measurement: warm-up runs, then R timed runs; the median is reported. FLOP counts
 * (nominal, the same for every implementation compared in BENCHMARKS.md), with D = E / H:
 *   core forward   F = 4 * B * H * N * N * D           (F / 2 with --causal)
 *   core backward  2.5 * F
 *   projections    P = 2 * B * N * E * 3E + 2 * B * N * E * E
 *   module forward F + P;  module backward 2 * P + 2.5 * F
 *   gemm           2 * M * N * K
 * --backward times forward + backward (and reports both phases). The module's forward runs
 * in inference mode without --backward, with save_for_backward on with it. --need-weights
 * also asks the module for the attention weights averaged over heads, [B, N, N], as
 * nn.MultiheadAttention(need_weights=True) returns them (the FLOP count stays nominal). */
#include "cli.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void print_help(FILE *f) {
    fputs("usage: mha bench --batch B --seq N --embed E --heads H [options]\n"
          "       mha bench --gemm M N K [--ta 0|1] [--tb 0|1] [options]\n\n"
          "Times nn.MultiheadAttention's forward (self-attention, batch first) on random data,\n"
          "or the attention core, or the library's matrix product; prints the median time and\n"
          "the rate in GFLOP/s.\n\n"
          "options:\n"
          "  --batch B, --seq N, --embed E, --heads H   the shape (E divisible by H)\n"
          "  --causal      causal mask (top-left); the attention's FLOP count is halved\n"
          "  --backward    time forward + backward\n"
          "  --need-weights  module: also return the attention weights averaged over heads,\n"
          "                [B, N, N] (as nn.MultiheadAttention's need_weights=True,\n"
          "                average_attn_weights=True); the FLOP count is unchanged\n"
          "  --core        time only mha_attn_forward (and mha_attn_backward) on projected\n"
          "                q, k, v [B, H, N, E/H]\n"
          "  --gemm M N K  time C[M,N] = op(A)[M,K] op(B)[K,N]; --ta/--tb transpose A/B\n"
          "                (default: ta 0, tb 1, as the projections x W^T)\n"
          "  --threads T   threads (default: all cores)\n"
          "  --isa NAME    kernel path: auto, generic, avx2, avx512\n"
          "  --runs R      timed runs after the warm-up (default 10)\n"
          "  --warmup W    untimed runs first (default: 1, more up to 0.2 s)\n"
          "  --budget S    stop the timed runs once they took S seconds (at least one run)\n"
          "  --dropout P   attention dropout probability (module: training mode), default 0\n"
          "  --json        print one line holding a JSON object\n"
          "  --help        this text\n",
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

/* A buffer of n floats uniform in [-1, 1) (a fixed LCG: every run sees the same data). */
static float *rand_buf(int64_t n, uint32_t seed) {
    float *p = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    if (!p) return NULL;
    for (int64_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        p[i] = (float)((seed >> 8) * (1.0 / 8388608.0) - 1.0);
    }
    return p;
}

typedef struct {
    long long batch, seq, embed, heads, threads, runs, warmup, m, n, k, ta, tb;
    int causal, backward, core, json, gemm, need_weights;
    double budget, dropout;
    const char *isa;
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
    mha_mask mask;
    /* gemm */
    float *ga, *gb, *gc;
} bench_state;

static mha_status run_fwd(bench_state *s) {
    const bench_args *a = s->a;
    if (a->gemm)
        return mha_sgemm(s->ctx, (int)a->ta, (int)a->tb, a->m, a->n, a->k, 1.0f, s->ga,
                         a->ta ? a->m : a->k, s->gb, a->tb ? a->k : a->n, 0.0f, s->gc, a->n);
    if (a->core) {
        mha_attn_params p = mha_attn_params_default();
        p.dropout_p = (float)a->dropout;
        return mha_attn_forward(s->ctx, &p, &s->q, &s->k, &s->v, &s->mask, &s->o,
                                a->backward ? &s->lse : NULL, NULL);
    }
    mha_forward_opts fo = mha_forward_opts_default();
    fo.save_for_backward = a->backward;
    fo.training = a->dropout > 0;
    return mha_module_forward(s->ctx, s->mod, &fo, &s->x, NULL, NULL, &s->mask, &s->y,
                              a->need_weights ? &s->w : NULL);
}

static mha_status run_bwd(bench_state *s) {
    if (s->a->core) {
        mha_attn_params p = mha_attn_params_default();
        p.dropout_p = (float)s->a->dropout;
        return mha_attn_backward(s->ctx, &p, &s->q, &s->k, &s->v, &s->mask, &s->o, &s->lse,
                                 &s->dout, &s->dq, &s->dk, &s->dv);
    }
    return mha_module_backward(s->ctx, s->mod, &s->dy, &s->dx, NULL, NULL);
}

static int positive(const char *opt, long long v, long long max) {
    if (v >= 1 && v <= max) return 0;
    return cli_usage_error("mha bench --help lists the options", "%s: got %lld, expected 1..%lld",
                           opt, v, max);
}

int mha_cmd_bench(int argc, char **argv) {
    bench_args a = {.batch = 1, .seq = 512, .embed = 512, .heads = 8, .runs = 10, .tb = 1,
                    .warmup = -1};
    /* "--gemm M N K" takes three values: pulled out before the common parser. */
    char **rest = malloc(sizeof(char *) * (size_t)(argc + 1));
    if (!rest) return cli_fail("out of memory");
    int nrest = 0;
    for (int i = 0; i < argc; i++) {
        if (i > 0 && !strcmp(argv[i], "--gemm")) {
            char *end[3];
            if (i + 3 >= argc) {
                free(rest);
                return cli_usage_error("mha bench --help lists the options",
                                       "--gemm: expected three sizes M N K");
            }
            a.m = strtoll(argv[i + 1], &end[0], 10);
            a.n = strtoll(argv[i + 2], &end[1], 10);
            a.k = strtoll(argv[i + 3], &end[2], 10);
            if (*end[0] || *end[1] || *end[2] || end[0] == argv[i + 1] ||
                end[1] == argv[i + 2] || end[2] == argv[i + 3]) {
                free(rest);
                return cli_usage_error("mha bench --help lists the options",
                                       "--gemm: got \"%s %s %s\", expected three whole numbers "
                                       "M N K", argv[i + 1], argv[i + 2], argv[i + 3]);
            }
            a.gemm = 1;
            i += 3;
            continue;
        }
        rest[nrest++] = argv[i];
    }
    rest[nrest] = NULL;
    cli_opt opts[] = {
        {"--batch", CLI_OPT_INT, &a.batch, 0},   {"--seq", CLI_OPT_INT, &a.seq, 0},
        {"--embed", CLI_OPT_INT, &a.embed, 0},   {"--heads", CLI_OPT_INT, &a.heads, 0},
        {"--causal", CLI_OPT_FLAG, &a.causal, 0}, {"--backward", CLI_OPT_FLAG, &a.backward, 0},
        {"--core", CLI_OPT_FLAG, &a.core, 0},     {"--threads", CLI_OPT_INT, &a.threads, 0},
        {"--json", CLI_OPT_FLAG, &a.json, 0},     {"--isa", CLI_OPT_STRING, &a.isa, 0},
        {"--runs", CLI_OPT_INT, &a.runs, 0},      {"--ta", CLI_OPT_INT, &a.ta, 0},
        {"--tb", CLI_OPT_INT, &a.tb, 0},         {"--warmup", CLI_OPT_INT, &a.warmup, 0},
        {"--budget", CLI_OPT_FLOAT, &a.budget, 0}, {"--dropout", CLI_OPT_FLOAT, &a.dropout, 0},
        {"--need-weights", CLI_OPT_FLAG, &a.need_weights, 0},
    };
    int nopts = (int)(sizeof opts / sizeof opts[0]);
    int rc = cli_parse(nrest, rest, opts, nopts);
    free(rest);
    if (rc == CLI_HELP) {
        print_help(stdout);
        return CLI_EXIT_OK;
    }
    if (rc) return rc;
    const long long big = 1LL << 20;
    if ((rc = positive("--runs", a.runs, 10000))) return rc;
    if (a.budget < 0)
        return cli_usage_error("mha bench --help lists the options",
                               "--budget: got %g, expected seconds >= 0 (0: no limit)", a.budget);
    if (!(a.dropout >= 0 && a.dropout < 1))
        return cli_usage_error("mha bench --help lists the options",
                               "--dropout: got %g, expected a probability in [0, 1)", a.dropout);
    if (cli_find(opts, nopts, "--warmup")->seen && (a.warmup < 0 || a.warmup > 10000))
        return cli_usage_error("mha bench --help lists the options",
                               "--warmup: got %lld, expected 0..10000", a.warmup);
    if (a.gemm) {
        if ((rc = positive("--gemm M", a.m, big)) || (rc = positive("--gemm N", a.n, big)) ||
            (rc = positive("--gemm K", a.k, big)))
            return rc;
        if ((a.ta != 0 && a.ta != 1) || (a.tb != 0 && a.tb != 1))
            return cli_usage_error("mha bench --help lists the options",
                                   "--ta/--tb: got %lld/%lld, expected 0 or 1", a.ta, a.tb);
        if (a.core || a.backward || a.causal || a.dropout > 0 || a.need_weights)
            return cli_usage_error("mha bench --help lists the options",
                                   "--gemm: cannot be combined with --core, --backward, --causal, "
                                   "--dropout, --need-weights");
    } else {
        if ((rc = positive("--batch", a.batch, big)) || (rc = positive("--seq", a.seq, big)) ||
            (rc = positive("--embed", a.embed, big)) || (rc = positive("--heads", a.heads, big)))
            return rc;
        if (a.embed % a.heads)
            return cli_usage_error("mha bench --help lists the options",
                                   "--embed: got %lld, expected a multiple of --heads %lld",
                                   a.embed, a.heads);
        if (a.core && a.need_weights)
            return cli_usage_error("mha bench --help lists the options",
                                   "--need-weights: applies to the module, not to --core");
    }

    mha_ctx *ctx;
    rc = cli_ctx_create(cli_find(opts, nopts, "--threads")->seen ? &a.threads : NULL, a.isa,
                        &ctx);
    if (rc) return rc;

    bench_state s;
    memset(&s, 0, sizeof s);
    s.ctx = ctx;
    s.a = &a;
    s.mask = mha_mask_default();
    if (a.causal) s.mask.causal = MHA_CAUSAL_TOP_LEFT;
    const int64_t B = a.batch, N = a.seq, E = a.embed, H = a.heads, D = a.embed / a.heads;
    double flops_fwd, flops_bwd = 0;
    float *bufs[16] = {0};
    int nb = 0, oom = 0;
#define ALLOC(n, seed) (bufs[nb] = rand_buf((n), (seed)), oom |= !bufs[nb], bufs[nb++])
    if (a.gemm) {
        s.ga = ALLOC(a.m * a.k, 1);
        s.gb = ALLOC(a.k * a.n, 2);
        s.gc = ALLOC(a.m * a.n, 3);
        flops_fwd = 2.0 * (double)a.m * (double)a.n * (double)a.k;
    } else {
        double F = 4.0 * B * H * (double)N * N * D * (a.causal ? 0.5 : 1.0);
        double P = 2.0 * B * N * E * 3.0 * E + 2.0 * B * N * E * E;
        if (a.core) {
            int64_t sh[4] = {B, H, N, D}, sl[3] = {B, H, N};
            s.q = mha_tensor_make(ALLOC(B * H * N * D, 1), 4, sh);
            s.k = mha_tensor_make(ALLOC(B * H * N * D, 2), 4, sh);
            s.v = mha_tensor_make(ALLOC(B * H * N * D, 3), 4, sh);
            s.o = mha_tensor_make(ALLOC(B * H * N * D, 4), 4, sh);
            s.lse = mha_tensor_make(ALLOC(B * H * N, 5), 3, sl);
            if (a.backward) {
                s.dout = mha_tensor_make(ALLOC(B * H * N * D, 6), 4, sh);
                s.dq = mha_tensor_make(ALLOC(B * H * N * D, 7), 4, sh);
                s.dk = mha_tensor_make(ALLOC(B * H * N * D, 8), 4, sh);
                s.dv = mha_tensor_make(ALLOC(B * H * N * D, 9), 4, sh);
            }
            flops_fwd = F;
            flops_bwd = 2.5 * F;
        } else {
            int64_t sh[3] = {B, N, E};
            s.x = mha_tensor_make(ALLOC(B * N * E, 1), 3, sh);
            s.y = mha_tensor_make(ALLOC(B * N * E, 2), 3, sh);
            if (a.need_weights) {
                int64_t shw[3] = {B, N, N};
                s.w = mha_tensor_make(ALLOC(B * N * N, 10), 3, shw);
            }
            if (a.backward) {
                s.dy = mha_tensor_make(ALLOC(B * N * E, 3), 3, sh);
                s.dx = mha_tensor_make(ALLOC(B * N * E, 4), 3, sh);
            }
            flops_fwd = F + P;
            flops_bwd = 2.0 * P + 2.5 * F;
        }
    }
#undef ALLOC
    double *tf = malloc(sizeof(double) * (size_t)a.runs), *tb = malloc(sizeof(double) * (size_t)a.runs);
    double *tt = malloc(sizeof(double) * (size_t)a.runs);
    int ret = CLI_EXIT_OK;
    if (oom || !tf || !tb || !tt) {
        ret = cli_fail("out of memory for the benchmark's buffers");
        goto out;
    }
    if (!a.gemm && !a.core) {
        mha_config cfg = mha_config_default(E, H);
        cfg.dropout = (float)a.dropout;
        if (mha_module_create(ctx, &cfg, &s.mod) != MHA_OK) {
            ret = cli_fail_lib(ctx, "mha_module_create");
            goto out;
        }
    }
    /* Warm-up (--warmup runs, or one run and more for short ones: up to 0.2 s), then the
     * timed runs. */
    double warm_until = cli_now_s() + 0.2;
    for (int w = 0; a.warmup >= 0 ? w < a.warmup : (w < 1 || (w < 20 && cli_now_s() < warm_until));
         w++) {
        if (run_fwd(&s) != MHA_OK) {
            ret = cli_fail_lib(ctx, "forward");
            goto out;
        }
        if (a.backward && run_bwd(&s) != MHA_OK) {
            ret = cli_fail_lib(ctx, "backward");
            goto out;
        }
    }
    double timed_from = cli_now_s();
    int runs = 0;
    for (int r = 0; r < a.runs; r++) {
        if (r > 0 && a.budget > 0 && cli_now_s() - timed_from > a.budget) break;
        runs++;
        double t0 = cli_now_s();
        mha_status st = run_fwd(&s);
        double t1 = cli_now_s();
        if (st == MHA_OK && a.backward) st = run_bwd(&s);
        double t2 = cli_now_s();
        if (st != MHA_OK) {
            ret = cli_fail_lib(ctx, "bench");
            goto out;
        }
        tf[r] = t1 - t0, tb[r] = t2 - t1, tt[r] = t2 - t0;
    }
    double med = median(tt, runs), med_f = median(tf, runs);
    double med_b = a.backward ? median(tb, runs) : 0;
    double flops = flops_fwd + (a.backward ? flops_bwd : 0);
    double gflops = flops / med * 1e-9;
    const char *what = a.gemm ? "gemm" : a.core ? (a.backward ? "core_fwd_bwd" : "core_fwd")
                                                : (a.backward ? "module_fwd_bwd" : "module_fwd");
    const char *isa = mha_isa_name(mha_ctx_isa(ctx));
    if (a.json) {
        if (a.gemm)
            printf("{\"what\":\"gemm\",\"M\":%lld,\"N\":%lld,\"K\":%lld,\"ta\":%lld,\"tb\":%lld,",
                   a.m, a.n, a.k, a.ta, a.tb);
        else
            printf("{\"what\":\"%s\",\"batch\":%lld,\"seq\":%lld,\"embed\":%lld,\"heads\":%lld,"
                   "\"causal\":%s,\"backward\":%s,\"core\":%s,\"need_weights\":%s,"
                   "\"dropout\":%g,", what, a.batch, a.seq, a.embed, a.heads,
                   a.causal ? "true" : "false", a.backward ? "true" : "false",
                   a.core ? "true" : "false", a.need_weights ? "true" : "false", a.dropout);
        printf("\"isa\":\"%s\",\"threads\":%d,\"runs\":%d,\"median_ms\":%.4f,\"gflops\":%.3f,"
               "\"fwd_median_ms\":%.4f,\"fwd_gflops\":%.3f", isa, mha_ctx_threads(ctx), runs,
               med * 1e3, gflops, med_f * 1e3, flops_fwd / med_f * 1e-9);
        if (a.backward)
            printf(",\"bwd_median_ms\":%.4f,\"bwd_gflops\":%.3f", med_b * 1e3,
                   flops_bwd / med_b * 1e-9);
        printf(",\"flops\":%.6g}\n", flops);
    } else {
        if (a.gemm)
            printf("gemm M %lld N %lld K %lld (ta %lld, tb %lld)", a.m, a.n, a.k, a.ta, a.tb);
        else
            printf("%s B %lld N %lld E %lld H %lld%s%s", what, a.batch, a.seq, a.embed, a.heads,
                   a.causal ? " causal" : "", a.need_weights ? " need_weights" : "");
        printf(", isa %s, %d threads: median %.3f ms of %d runs, %.1f GFLOP/s\n", isa,
               mha_ctx_threads(ctx), med * 1e3, runs, gflops);
        if (a.backward)
            printf("  forward %.3f ms (%.1f GFLOP/s), backward %.3f ms (%.1f GFLOP/s)\n",
                   med_f * 1e3, flops_fwd / med_f * 1e-9, med_b * 1e3, flops_bwd / med_b * 1e-9);
    }
out:
    mha_module_free(s.mod);
    for (int i = 0; i < nb; i++) free(bufs[i]);
    free(tf), free(tb), free(tt);
    mha_ctx_free(ctx);
    return ret;
}
