/* cmd_demo.c - `mha demo [--task NAME]`: trains a tiny model from random initialization with
 * mha's real attention layer and backward, then shows what its heads learned.
 *
 * The model (tools/demo_model.h) is token + position embeddings -> one nn.MultiheadAttention
 * layer (mha_module_forward / mha_module_backward) -> a linear readout, trained with Adam on
 * minibatches drawn from a seeded counter-based hash. The task (tools/demo_tasks.h) decides
 * the data, hence where the heads must look: the default, reverse, needs the anti-diagonal;
 * lookup a match of contents; prevmax two heads doing two different things. Attention dropout
 * while training (0.1; 0.05 for prevmax) makes each head reliable on its own, so the pictures
 * are clean.
 * One training loop, one evaluation and one set of pictures serve every task.
 *
 * stdout is a pure function of the options other than --threads (same seed, same bytes): it
 * ends with the loss as a sparkline, the heads, and "accuracy: X", the held-out accuracy with
 * three decimals. The progress (a line redrawn on a terminal, plain lines otherwise) and the
 * wall time go to stderr. */
#include "cli.h"
#include "demo_model.h"
#include "demo_tasks.h"
#include "mha_viz.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DEMO_BATCH 64
#define DEMO_EVAL_EVERY 25
#define DEMO_VAL_SEQS 256   /* early stopping looks at these ... */
#define DEMO_TEST_SEQS 1000 /* ... and the reported accuracy at these */
#define DEMO_STOP_ACC 0.999
#define DEMO_MIN_STEPS 100 /* attention dropout keeps sharpening the heads after that */
#define DEMO_DEFAULT_SEED 1
#define DEMO_SPARK_WIDTH 48 /* columns of the loss sparkline */

enum {
    STREAM_TRAIN = 0,
    STREAM_VAL = 1,
    STREAM_TEST = 2
};

static void print_help(FILE *f) {
    fprintf(f,
            "usage: mha demo [--task NAME] [--seed N] [--steps N] [--out-dir DIR] [--threads N]\n"
            "       mha demo --list-tasks\n\n"
            "Trains a tiny model from random initialization on a task: token + position\n"
            "embeddings, one multi-head attention layer (mha's own forward and backward), a\n"
            "linear readout, Adam. Prints the loss as it falls (a progress line on stderr, a\n"
            "sparkline at the end), then what each head learned: its attention on a held-out\n"
            "example, and how much of it lies where the task's answers are. Writes\n"
            "attention.svg, attention.png and attention.html into DIR with the trained layer\n"
            "(layer.safetensors) and the example's input (example.npy), and ends with\n"
            "\"accuracy: X\", the share of answers right on 1000 held-out sequences (never seen\n"
            "in training).\n\n"
            "tasks:\n");
    for (int i = 0; i < demo_task_count(); i++) {
        const demo_task *t = demo_task_at(i);
        fprintf(f, "  %-8s %s\n  %-8s %s\n  %-8s (at most %lld steps%s)\n", t->name, t->goal, "",
                t->explain, "", (long long)t->steps, i == 0 ? "; the default task" : "");
    }
    fprintf(f,
            "\noptions:\n"
            "  --task NAME    what to learn (default %s)\n"
            "  --list-tasks   print the task names, one per line, then exit\n"
            "  --seed N       initialization and data (default %d); the same seed gives the same\n"
            "                 output, whatever the thread count\n"
            "  --steps N      most training steps (default: the task's, above); training stops\n"
            "                 earlier, after at least %d steps, once two validation sets in a\n"
            "                 row are %.1f%% right\n"
            "  --out-dir DIR  where the pictures go (default mha-demo/TASK, created if missing)\n"
            "  --threads N    threads to use (default 1: the model is so small that more threads\n"
            "                 only add overhead; 0 = all cores)\n"
            "  --self-check   compare the model's gradient with finite differences, then exit\n"
            "  --help         this text\n\n"
            "exit status: 0 success, 1 usage error, 2 runtime failure\n\n"
            "example:\n"
            "  mha demo --task prevmax --out-dir /tmp/demo && xdg-open /tmp/demo/attention.html\n",
            demo_task_at(0)->name, DEMO_DEFAULT_SEED, DEMO_MIN_STEPS, 100.0 * DEMO_STOP_ACC);
}

/* mkdir -p: creates dir and its missing parents. */
static int make_dirs(const char *dir) {
    char buf[4096];
    size_t n = strlen(dir);
    if (n == 0 || n >= sizeof buf) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(buf, dir, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != '\0') continue;
        char c = buf[i];
        buf[i] = '\0';
        if (mkdir(buf, 0777) != 0 && errno != EEXIST) return -1;
        buf[i] = c;
    }
    struct stat sb;
    if (stat(dir, &sb) != 0) return -1;
    if (!S_ISDIR(sb.st_mode)) {
        errno = ENOTDIR;
        return -1;
    }
    return 0;
}

/* Share of answers right over the held-out sequences first .. first + n - 1 of a stream, in
 * chunks of max_batch. */
static mha_status evaluate(mha_ctx *ctx, demo_model *m, const demo_task *t, uint64_t seed,
                           int stream, int64_t first_seq, int n, double *acc) {
    const demo_config *c = demo_model_config(m);
    int32_t *tok = malloc((size_t)c->max_batch * c->len * sizeof *tok);
    int32_t *tgt = malloc((size_t)c->max_batch * c->len * sizeof *tgt);
    if (!tok || !tgt) {
        free(tok);
        free(tgt);
        return MHA_ERR_NOMEM;
    }
    int64_t good = 0, answered = 0;
    mha_status st = MHA_OK;
    for (int first = 0; first < n && st == MHA_OK; first += c->max_batch) {
        int b = n - first < c->max_batch ? n - first : c->max_batch;
        for (int k = 0; k < b; k++)
            demo_task_sequence(t, seed, (uint64_t)stream, (uint64_t)(first_seq + first + k), 1,
                               tok + (size_t)k * c->len, tgt + (size_t)k * c->len);
        int64_t g = 0, a = 0;
        st = demo_model_loss(ctx, m, b, tok, tgt, 0, NULL, &g, &a);
        good += g;
        answered += a;
    }
    free(tok);
    free(tgt);
    *acc = answered ? (double)good / (double)answered : 0.0;
    return st;
}

/* ---------------------------------------------------------------------------------------------
 * The loss as it falls: a progress line on stderr (redrawn with \r on a terminal, plain lines
 * at steps 1, 2, 4, 8, ..., then every 500 otherwise) and a sparkline on stdout at the end
 * ------------------------------------------------------------------------------------------- */
/* The bar: step, loss, validation accuracy, and the time left (an upper bound: training may stop
 * early); done: the bar is full and the line says how long it took. */
static void progress_bar(int64_t step, int64_t steps, double loss, double acc, double t0,
                         int done) {
    const int width = 24;
    const double el = cli_now_s() - t0, left = el / (double)step * (double)(steps - step);
    int fill = done ? width : (int)((double)width * (double)step / (double)steps);
    char bar[32], accs[16], times[32];
    for (int i = 0; i < width; i++) bar[i] = i < fill ? '#' : '.';
    bar[width] = '\0';
    if (acc >= 0) snprintf(accs, sizeof accs, "%.3f", acc);
    else snprintf(accs, sizeof accs, "  -  ");
    if (done) snprintf(times, sizeof times, "done in %.2fs", el);
    else snprintf(times, sizeof times, "left <= %.1fs", left);
    fprintf(stderr, "\r  [%s] step %5lld/%lld  loss %.4f  acc %s  %-16s", bar, (long long)step,
            (long long)steps, loss, accs, times);
    fflush(stderr);
}

/* Whether a plain progress line is due at step: steps 1, 2, 4, 8, ... (the loss falls fastest
 * at first), then every 500. */
static int plain_line_due(int64_t step) { return (step & (step - 1)) == 0 || step % 500 == 0; }

/* acc < 0: no evaluation yet. */
static void progress_line(int64_t step, double loss, double acc) {
    char accs[16];
    if (acc >= 0) snprintf(accs, sizeof accs, "%.3f", acc);
    else snprintf(accs, sizeof accs, "-");
    fprintf(stderr, "  step %5lld  loss %.4f  validation accuracy %s\n", (long long)step, loss,
            accs);
}

/* The per-step losses loss[0 .. n-1] as one line of eighth blocks, each column the mean of a
 * run of steps, on a log scale from the smallest column to the largest (a loss falling from 2
 * to 0.01 keeps its shape at the end). */
static void print_sparkline(const float *loss, int64_t n) {
    static const char *const blocks[8] = {"\u2581", "\u2582", "\u2583", "\u2584",
                                          "\u2585", "\u2586", "\u2587", "\u2588"};
    double col[DEMO_SPARK_WIDTH];
    if (n < 1) return;
    const int w = n < DEMO_SPARK_WIDTH ? (int)n : DEMO_SPARK_WIDTH;
    double lo = HUGE_VAL, hi = -HUGE_VAL;
    for (int c = 0; c < w; c++) {
        const int64_t a = c * n / w, b = (c + 1) * n / w;
        double sum = 0.0;
        for (int64_t k = a; k < b; k++) sum += loss[k];
        col[c] = log(fmax(sum / (double)(b - a), 1e-6));
        lo = fmin(lo, col[c]);
        hi = fmax(hi, col[c]);
    }
    printf("  loss %.4f ", exp(col[0]));
    for (int c = 0; c < w; c++) {
        const int level = hi > lo ? (int)lrint(7.0 * (col[c] - lo) / (hi - lo)) : 0;
        fputs(blocks[level], stdout);
    }
    printf(" %.4f  (steps 1 to %lld, log scale, each column the mean of %s%lld steps)\n",
           exp(col[w - 1]), (long long)n, n % w ? "about " : "", (long long)((n + w - 1) / w));
}

/* ---------------------------------------------------------------------------------------------
 * --self-check: the whole model's gradient against central finite differences
 * ------------------------------------------------------------------------------------------- */
static int grad_check_once(mha_ctx *ctx, demo_model *m, const int32_t *tok, const int32_t *tgt,
                           int B, const char *when, int *checked) {
    demo_model_zero_grad(m);
    double loss0;
    mha_status st = demo_model_loss(ctx, m, B, tok, tgt, 1, &loss0, NULL, NULL);
    if (st != MHA_OK) return cli_fail_lib(ctx, "demo: gradient check");
    int bad = 0;
    for (int i = 0; i < demo_model_param_count(m); i++) {
        demo_param p = demo_model_param(m, i);
        double gmax = 0.0, emax = 0.0;
        for (int64_t k = 0; k < p.numel; k++) gmax = fmax(gmax, fabs((double)p.grad[k]));
        const int64_t nk = p.numel < 24 ? p.numel : 24;
        for (int64_t j = 0; j < nk; j++) {
            /* Entries spread over the tensor, including the first and the last. */
            const int64_t k = nk == 1 ? 0 : j * (p.numel - 1) / (nk - 1);
            const float keep = p.value[k], h = 1e-2f;
            double lp, lm;
            p.value[k] = keep + h;
            st = demo_model_loss(ctx, m, B, tok, tgt, 0, &lp, NULL, NULL);
            p.value[k] = keep - h;
            if (st == MHA_OK) st = demo_model_loss(ctx, m, B, tok, tgt, 0, &lm, NULL, NULL);
            p.value[k] = keep;
            if (st != MHA_OK) return cli_fail_lib(ctx, "demo: gradient check");
            const double fd = (lp - lm) / (2.0 * ((double)(keep + h) - (double)keep));
            const double err = fabs(fd - (double)p.grad[k]);
            /* Float32 forward passes and an O(h^2) truncation: a tolerance relative to the
             * tensor's largest gradient, far below what a wrong term would give. */
            if (err > 2e-2 * gmax + 2e-6) {
                if (bad < 10)
                    fprintf(stderr, "  %s: %s[%lld]: analytic %.6g, finite difference %.6g\n", when,
                            p.name, (long long)k, (double)p.grad[k], fd);
                bad++;
            }
            emax = fmax(emax, err);
            (*checked)++;
        }
        printf("  %-8s %-16s %5lld entries, max |grad| %.3e, max error %.2e\n", when, p.name,
               (long long)p.numel, gmax, emax);
    }
    if (bad)
        return cli_fail("demo: gradient check: %d entries differ from finite differences", bad);
    return 0;
}

/* A training batch: sequences (step - 1) * B .. step * B - 1 of the training stream. */
static void train_batch(const demo_task *t, uint64_t seed, int64_t step, int B, int32_t *tok,
                        int32_t *tgt) {
    for (int b = 0; b < B; b++)
        demo_task_sequence(t, seed, STREAM_TRAIN, (uint64_t)((step - 1) * B + b), 0,
                           tok + (size_t)b * t->len, tgt + (size_t)b * t->len);
}

static int self_check(mha_ctx *ctx, const demo_task *t, uint64_t seed) {
    demo_config cfg = demo_task_config(t, seed);
    cfg.max_batch = DEMO_BATCH;
    cfg.dropout = 0.0f; /* a training forward must be a deterministic function of the weights */
    demo_model *m = NULL;
    mha_status st = demo_model_create(ctx, &cfg, &m);
    if (st != MHA_OK) return cli_fail_lib(ctx, "demo: model");
    enum {
        B = 4
    };
    int32_t tok[B * DEMO_MAX_LEN], tgt[B * DEMO_MAX_LEN];
    int32_t btok[DEMO_BATCH * DEMO_MAX_LEN], btgt[DEMO_BATCH * DEMO_MAX_LEN];
    for (int b = 0; b < B; b++)
        demo_task_sequence(t, seed, 7, (uint64_t)b, 0, tok + b * t->len, tgt + b * t->len);
    int checked = 0;
    printf("gradient check (task %s): the whole model's loss against central differences "
           "(h = 0.01)\n",
           t->name);
    int rc = grad_check_once(ctx, m, tok, tgt, B, "init", &checked);
    /* Again after some training, when the attention is no longer uniform. */
    for (int64_t step = 1; rc == 0 && step <= 8; step++) {
        train_batch(t, seed, step, DEMO_BATCH, btok, btgt);
        demo_model_zero_grad(m);
        st = demo_model_loss(ctx, m, DEMO_BATCH, btok, btgt, 1, NULL, NULL, NULL);
        if (st != MHA_OK) rc = cli_fail_lib(ctx, "demo: training");
        demo_model_adam_step(m, step);
    }
    if (rc == 0) rc = grad_check_once(ctx, m, tok, tgt, B, "trained", &checked);
    if (rc == 0) printf("gradient check passed: %d entries\n", checked);
    demo_model_free(m);
    return rc;
}

/* ---------------------------------------------------------------------------------------------
 * The demo: set up (model, directory, outputs declared), train, evaluate, show the heads, write
 * the files (all or none)
 * ------------------------------------------------------------------------------------------- */
enum {
    OUT_SVG,
    OUT_PNG,
    OUT_HTML,
    OUT_LAYER,
    OUT_EXAMPLE,
    OUT_N
};
static const char *const out_names[OUT_N] = {"attention.svg", "attention.png", "attention.html",
                                             "layer.safetensors", "example.npy"};

typedef struct {
    mha_ctx *ctx;
    const demo_task *task;
    uint64_t seed;
    demo_config cfg;
    demo_model *m;
    cli_outputs outs;
    int out_index[OUT_N]; /* -1: not written (no PNG support) */
    char out_path[OUT_N][4200];
    int64_t steps, step; /* the budget, the steps taken */
    float *losses;       /* [steps]: the training loss of each step taken */
    double loss, val, acc;
    int32_t ex[DEMO_MAX_LEN], ext[DEMO_MAX_LEN];           /* a held-out example, targets */
    float w[DEMO_MAX_HEADS * DEMO_MAX_LEN * DEMO_MAX_LEN]; /* its attention, [H, L, L] */
    char tok_label[DEMO_MAX_LEN][DEMO_LABEL_CAP];          /* the example's tokens */
    char ans_label[DEMO_MAX_LEN][DEMO_LABEL_CAP];          /* and answers */
} demo_run;

static int discard(void *user, const void *data, size_t size) {
    (void)user, (void)data, (void)size;
    return 0;
}

/* Whether this build writes PNGs (libpng found): one tiny image into nowhere. */
static int png_supported(mha_ctx *ctx) {
    const float w1 = 1.0f;
    mha_viz_opts vo = mha_viz_opts_default();
    return mha_viz_png(ctx, &w1, 1, 1, 1, &vo, discard, NULL) != MHA_ERR_UNSUPPORTED;
}

/* The model, the output directory (created first: a bad --out-dir fails before the training)
 * and every output declared. */
static int demo_setup(demo_run *r, const char *out_dir) {
    r->cfg = demo_task_config(r->task, r->seed);
    if (demo_model_create(r->ctx, &r->cfg, &r->m) != MHA_OK)
        return cli_fail_lib(r->ctx, "demo: model");
    r->losses = malloc((size_t)r->steps * sizeof *r->losses);
    if (!r->losses) return cli_fail("demo: out of memory");
    if (make_dirs(out_dir) != 0)
        return cli_fail("--out-dir: cannot create \"%s\": %s", out_dir, strerror(errno));
    size_t n = strlen(out_dir);
    const char *sep = n && out_dir[n - 1] == '/' ? "" : "/";
    const int png = png_supported(r->ctx);
    for (int f = 0; f < OUT_N; f++) {
        snprintf(r->out_path[f], sizeof r->out_path[f], "%s%s%s", out_dir, sep, out_names[f]);
        r->out_index[f] = -1;
        int rc = f == OUT_PNG && !png
                     ? 0
                     : cli_outputs_add(&r->outs, "--out-dir", r->out_path[f], &r->out_index[f]);
        if (rc) return rc;
    }
    return 0;
}

/* Training with Adam until the step budget or, after DEMO_MIN_STEPS, a validation accuracy of
 * DEMO_STOP_ACC twice in a row (each evaluation on new sequences: one lucky set does not stop
 * the training), with the progress on stderr. */
static int demo_train(demo_run *r) {
    const int bar = isatty(STDERR_FILENO);
    int32_t tok[DEMO_BATCH * DEMO_MAX_LEN], tgt[DEMO_BATCH * DEMO_MAX_LEN];
    const double t0 = cli_now_s();
    double last_bar = 0.0;
    int rc = 0, good = 0; /* good: evaluations in a row at DEMO_STOP_ACC */
    r->val = -1.0;
    while (r->step < r->steps) {
        const int64_t step = ++r->step;
        train_batch(r->task, r->seed, step, DEMO_BATCH, tok, tgt);
        demo_model_zero_grad(r->m);
        if (demo_model_loss(r->ctx, r->m, DEMO_BATCH, tok, tgt, 1, &r->loss, NULL, NULL) !=
            MHA_OK) {
            rc = cli_fail_lib(r->ctx, "demo: training");
            break;
        }
        demo_model_adam_step(r->m, step);
        r->losses[step - 1] = (float)r->loss;
        if (!isfinite(r->loss)) {
            rc = cli_fail("demo: training diverged at step %lld (loss %g)", (long long)step,
                          r->loss);
            break;
        }
        const int eval = step % DEMO_EVAL_EVERY == 0 || step == r->steps;
        const int64_t first = step / DEMO_EVAL_EVERY * DEMO_VAL_SEQS;
        if (eval &&
            evaluate(r->ctx, r->m, r->task, r->seed, STREAM_VAL, first, DEMO_VAL_SEQS, &r->val)) {
            rc = cli_fail_lib(r->ctx, "demo: evaluation");
            break;
        }
        if (eval) good = r->val >= DEMO_STOP_ACC ? good + 1 : 0;
        const int stop = step % DEMO_EVAL_EVERY == 0 && step >= DEMO_MIN_STEPS && good >= 2;
        if (bar && (cli_now_s() - last_bar >= 0.05 || step == r->steps)) {
            progress_bar(step, r->steps, r->loss, r->val, t0, 0);
            last_bar = cli_now_s();
        } else if (!bar && (stop || step == r->steps || plain_line_due(step))) {
            progress_line(step, r->loss, r->val);
        }
        if (stop) break;
    }
    if (bar) {
        if (r->step > 0) progress_bar(r->step, r->steps, r->loss, r->val, t0, 1);
        fprintf(stderr, "\n");
    } else if (!rc) {
        fprintf(stderr, "  trained in %.2f s\n", cli_now_s() - t0);
    }
    return rc;
}

/* The held-out accuracy, the loss curve, and a held-out example whose token labels all differ
 * (every label of the pictures is then unambiguous) and that the task finds telling, with its
 * attention. */
static int demo_evaluate(demo_run *r) {
    const demo_task *t = r->task;
    const int L = r->cfg.len;
    if (evaluate(r->ctx, r->m, t, r->seed, STREAM_TEST, 0, DEMO_TEST_SEQS, &r->acc) != MHA_OK)
        return cli_fail_lib(r->ctx, "demo: evaluation");
    printf("  stopped after %lld steps: training loss %.4f, validation accuracy %.3f\n",
           (long long)r->step, r->loss, r->val);
    print_sparkline(r->losses, r->step);
    printf("  held out: %d sequences never seen in training (a hash of its tokens puts each "
           "sequence in one set)\n",
           DEMO_TEST_SEQS);
    if (r->acc < 0.99)
        printf("  note: not fully trained yet (held-out accuracy %.3f); try more --steps\n",
               r->acc);
    for (uint64_t idx = 0; idx < 100000; idx++) {
        demo_task_sequence(t, r->seed, STREAM_TEST, idx, 1, r->ex, r->ext);
        int distinct = 1;
        for (int i = 0; i < L && distinct; i++)
            for (int j = 0; j < i; j++)
                if (r->ex[i] == r->ex[j]) distinct = 0;
        if (distinct && (!t->telling || t->telling(r->ex))) break;
    }
    for (int i = 0; i < L; i++) {
        t->token_label(r->ex[i], r->tok_label[i]);
        if (r->ext[i] >= 0) t->answer_label(r->ext[i], r->ans_label[i]);
        else snprintf(r->ans_label[i], DEMO_LABEL_CAP, "-");
    }
    if (demo_model_attention(r->ctx, r->m, r->ex, r->w) != MHA_OK)
        return cli_fail_lib(r->ctx, "demo: attention");
    return 0;
}

/* Share of head h's attention, averaged over the answered queries, on the keys where part role
 * of their answer is. */
static double role_share(const demo_run *r, int h, int role) {
    const int L = r->cfg.len;
    unsigned char look[DEMO_MAX_LEN];
    double on = 0.0;
    int rows = 0;
    for (int i = 0; i < L; i++) {
        if (r->ext[i] < 0) continue;
        r->task->where(r->ex, role, i, look);
        for (int j = 0; j < L; j++)
            if (look[j]) on += r->w[((size_t)h * L + i) * L + j];
        rows++;
    }
    return rows ? on / rows : 0.0;
}

/* The terminal heatmaps of every head (numbered from 0, as `mha viz`) and what share of each
 * head's attention lies where the answers are. */
static int demo_show_heads(demo_run *r, mha_viz_opts vo, const char *input, const char *output) {
    const demo_task *t = r->task;
    const int L = r->cfg.len, H = r->cfg.heads;
    vo.term_mode = cli_term_color() ? MHA_VIZ_TERM_COLOR : MHA_VIZ_TERM_UNICODE;
    vo.width = cli_term_width(0);
    printf("\nwhat the heads learned, on the held-out input %s (answers %s):\n", input, output);
    printf("each row is a query position, each column a key; %s\n\n", t->explain);
    fflush(stdout);
    if (mha_viz_term(r->ctx, r->w, H, L, L, &vo, cli_write_file, stdout) != MHA_OK)
        return cli_fail_lib(r->ctx, "demo: terminal heatmap");
    mha_viz_stats stats[DEMO_MAX_HEADS];
    if (mha_viz_head_stats(r->ctx, r->w, H, L, L, stats) != MHA_OK)
        return cli_fail_lib(r->ctx, "demo: head statistics");
    for (int h = 0; h < H; h++) {
        printf("  head %d:", h);
        for (int role = 0; role < t->nroles; role++)
            printf("%s %5.1f%% on %s", role ? "," : "", 100.0 * role_share(r, h, role),
                   t->role[role]);
        printf("; row entropy %.2f bits (uniform: %.2f)\n", stats[h].entropy, stats[h].max_entropy);
    }
    printf("\n");
    return 0;
}

/* One picture of the example's attention, for mha_outputs_write. */
typedef struct {
    int kind; /* OUT_SVG, OUT_PNG or OUT_HTML */
    const demo_run *r;
    const mha_viz_opts *vo;
} picture;

static mha_status render_picture(mha_ctx *ctx, void *arg, mha_write_fn write, void *user) {
    const picture *p = arg;
    const int64_t H = p->r->cfg.heads, L = p->r->cfg.len;
    if (p->kind == OUT_SVG) return mha_viz_svg(ctx, p->r->w, H, L, L, p->vo, write, user);
    if (p->kind == OUT_PNG) return mha_viz_png(ctx, p->r->w, H, L, L, p->vo, write, user);
    return mha_viz_html(ctx, p->r->w, H, L, L, p->vo, write, user);
}

/* Every output written, then committed together: the pictures, the trained layer (with its
 * number of heads in the metadata) and the example's embedded input, so that
 * `mha viz --weights DIR/layer.safetensors --query DIR/example.npy --all` draws the same. */
static int demo_write(demo_run *r, const mha_viz_opts *vo) {
    int rc = 0;
    for (int f = OUT_SVG; f <= OUT_HTML && !rc; f++) {
        picture p = {f, r, vo};
        if (r->out_index[f] >= 0)
            rc = cli_outputs_write(r->ctx, &r->outs, r->out_index[f], render_picture, &p);
    }
    mha_st *layer = NULL;
    if (!rc && mha_module_state_dict(r->ctx, demo_model_attn(r->m), &layer) != MHA_OK)
        rc = cli_fail_lib(r->ctx, "demo: layer");
    if (!rc) rc = cli_outputs_write_st(r->ctx, &r->outs, r->out_index[OUT_LAYER], layer);
    mha_st_free(layer);
    mha_array x;
    int64_t xs[2] = {r->cfg.len, r->cfg.embed};
    memset(&x, 0, sizeof x);
    if (!rc && (mha_array_alloc(r->ctx, MHA_DTYPE_F32, 2, xs, &x) != MHA_OK ||
                demo_model_embed(r->m, r->ex, (float *)x.data) != MHA_OK))
        rc = cli_fail_lib(r->ctx, "demo: example");
    if (!rc) rc = cli_outputs_write_npy(r->ctx, &r->outs, r->out_index[OUT_EXAMPLE], &x);
    mha_array_free(&x);
    if (!rc) rc = cli_outputs_commit(r->ctx, &r->outs);
    for (int f = 0; f < OUT_N && !rc; f++) {
        if (r->out_index[f] >= 0) printf("wrote %s\n", r->out_path[f]);
        else
            printf("skipped %s: this build has no PNG support (libpng was not found)\n",
                   r->out_path[f]);
    }
    return rc;
}

/* The labels joined by spaces into buf (cap >= DEMO_MAX_LEN * DEMO_LABEL_CAP). */
static void join_labels(char (*label)[DEMO_LABEL_CAP], int n, char *buf, size_t cap) {
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; i < n && used < cap; i++)
        used += (size_t)snprintf(buf + used, cap - used, "%s%s", i ? " " : "", label[i]);
}

/* The pictures of the example: the terminal's, then the files. */
static int demo_pictures(demo_run *r) {
    const int L = r->cfg.len, H = r->cfg.heads;
    char titles[DEMO_MAX_HEADS][16], input[DEMO_MAX_LEN * DEMO_LABEL_CAP],
        output[DEMO_MAX_LEN * DEMO_LABEL_CAP], title[3 * DEMO_MAX_LEN * DEMO_LABEL_CAP];
    const char *lab[DEMO_MAX_LEN], *tit[DEMO_MAX_HEADS];
    for (int i = 0; i < L; i++) lab[i] = r->tok_label[i];
    for (int h = 0; h < H; h++) {
        snprintf(titles[h], sizeof titles[h], "head %d", h);
        tit[h] = titles[h];
    }
    join_labels(r->tok_label, L, input, sizeof input);
    join_labels(r->ans_label, L, output, sizeof output);
    snprintf(title, sizeof title, "mha demo %s: attention of each head, input %s -> %s",
             r->task->name, input, output);
    mha_viz_opts vo = mha_viz_opts_default();
    vo.view = MHA_VIZ_ALL;
    vo.query_tokens = vo.key_tokens = lab;
    vo.head_titles = tit;
    vo.vmin = 0.0f;
    vo.vmax = 1.0f;
    int rc = demo_show_heads(r, vo, input, output);
    vo.title = title;
    if (!rc) rc = demo_write(r, &vo);
    return rc;
}

static int run_demo(mha_ctx *ctx, const demo_task *task, uint64_t seed, int64_t steps,
                    const char *out_dir) {
    demo_run *r = calloc(1, sizeof *r);
    if (!r) return cli_fail("demo: out of memory");
    r->ctx = ctx;
    r->task = task;
    r->seed = seed;
    r->steps = steps;
    int rc = demo_setup(r, out_dir);
    if (!rc) {
        printf("mha demo %s: one attention layer (%d heads, E = %d) learns to %s\n", task->name,
               r->cfg.heads, r->cfg.embed, task->goal);
        printf("  model: token + position embeddings -> multi-head attention -> linear readout\n");
        printf("  training: from random initialization (seed %llu), Adam lr %g, batch %d, "
               "attention dropout %g\n",
               (unsigned long long)seed, (double)r->cfg.lr, DEMO_BATCH, (double)r->cfg.dropout);
        fflush(stdout);
        rc = demo_train(r);
    }
    if (!rc) rc = demo_evaluate(r);
    if (!rc) rc = demo_pictures(r);
    if (!rc) printf("accuracy: %.3f\n", r->acc);
    cli_outputs_free(&r->outs);
    demo_model_free(r->m);
    free(r->losses);
    free(r);
    return rc;
}

int mha_cmd_demo(int argc, char **argv) {
    long long seed = DEMO_DEFAULT_SEED, steps = 0, threads = 1;
    const char *out_dir = NULL, *task_name = demo_task_at(0)->name;
    int check = 0, list = 0;
    cli_opt opts[] = {
        {"--task", CLI_OPT_STRING, &task_name, 0},  {"--list-tasks", CLI_OPT_FLAG, &list, 0},
        {"--seed", CLI_OPT_INT, &seed, 0},          {"--steps", CLI_OPT_INT, &steps, 0},
        {"--out-dir", CLI_OPT_STRING, &out_dir, 0}, {"--threads", CLI_OPT_INT, &threads, 0},
        {"--self-check", CLI_OPT_FLAG, &check, 0},
    };
    const int nopts = (int)(sizeof opts / sizeof opts[0]);
    int rc = cli_parse(argc, argv, opts, nopts);
    if (rc == CLI_HELP) {
        print_help(stdout);
        return 0;
    }
    if (rc) return rc;
    const char *hint = "mha demo --help lists the options";
    if (list) {
        for (int i = 0; i < demo_task_count(); i++) printf("%s\n", demo_task_at(i)->name);
        return 0;
    }
    const demo_task *task = demo_task_find(task_name);
    if (!task) {
        char names[256] = "";
        for (int i = 0, n = 0; i < demo_task_count() && n < (int)sizeof names; i++)
            n += snprintf(names + n, sizeof names - (size_t)n, "%s%s", i ? ", " : "",
                          demo_task_at(i)->name);
        return cli_usage_error("mha demo --help describes the tasks",
                               "--task: got \"%s\", expected one of %s", task_name, names);
    }
    if (!cli_find(opts, nopts, "--steps")->seen) steps = task->steps;
    if (seed < 0) return cli_usage_error(hint, "--seed: got %lld, expected 0 or more", seed);
    if (steps < 1 || steps > 1000000)
        return cli_usage_error(hint, "--steps: got %lld, expected 1 to 1000000", steps);
    char default_dir[64];
    if (!out_dir) {
        snprintf(default_dir, sizeof default_dir, "mha-demo/%s", task->name);
        out_dir = default_dir;
    }

    mha_ctx *ctx = NULL;
    rc = cli_ctx_create(&threads, NULL, &ctx); /* checks --threads as every command does */
    if (rc) return rc;
    rc = check ? self_check(ctx, task, (uint64_t)seed)
               : run_demo(ctx, task, (uint64_t)seed, steps, out_dir);
    mha_ctx_free(ctx);
    return rc;
}
