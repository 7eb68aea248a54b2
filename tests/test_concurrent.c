/* test_concurrent.c - distinct objects may be used concurrently (mha.h, THREAD SAFETY):
 * several pthreads, each with its own context and module, run forward and backward at once
 * while another thread arms and reads the process-wide allocation counters. Every thread must
 * get the bits a lone run gets. Built twice: as a normal test, and with -fsanitize=thread
 * (tsan_concurrent, CMakeLists.txt), where a data race anywhere on the way (the allocation
 * counter, the fault-injection countdown, the kernel tables) fails the run. */
#include "harness.h"
#include "core/internal.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>

enum {
    NTHREADS = 4,
    ROUNDS = 3,
    E = 16,
    H = 4,
    B = 2,
    L = 9
};

typedef struct {
    mha_status st;
    float y[B * L * E], dx[B * L * E], gw[3 * E * E];
    char msg[256];
} result;

static atomic_int workers_left, poker_running;

/* One context and one module per call: forward and backward ROUNDS times on fixed data. */
static void run_layer(result *r) {
    mha_ctx *ctx = NULL;
    mha_module *m = NULL;
    float x[B * L * E];
    for (int i = 0; i < B * L * E; i++) x[i] = (float)sin(0.37 * i);
    int64_t shape[3] = {B, L, E};
    mha_tensor tx = mha_tensor_make(x, 3, shape), ty = mha_tensor_make(r->y, 3, shape);
    mha_tensor tdx = mha_tensor_make(r->dx, 3, shape), g;
    mha_config cfg = mha_config_default(E, H);
    cfg.seed = 7;
    mha_mask mask = mha_mask_default();
    mask.causal = MHA_CAUSAL_TOP_LEFT;
    if ((r->st = mha_ctx_create(&ctx)) || (r->st = mha_ctx_set_threads(ctx, 1)) ||
        (r->st = mha_module_create(ctx, &cfg, &m)))
        goto done;
    for (int k = 0; k < ROUNDS; k++) {
        mha_module_zero_grad(m);
        if ((r->st = mha_module_forward(ctx, m, NULL, &tx, NULL, NULL, &mask, &ty, NULL)) ||
            (r->st = mha_module_backward(ctx, m, &ty, &tdx, NULL, NULL)))
            goto done;
    }
    if ((r->st = mha_module_param(ctx, m, "in_proj_weight", NULL, &g))) goto done;
    memcpy(r->gw, g.data, sizeof r->gw);
done:
    snprintf(r->msg, sizeof r->msg, "%s", mha_ctx_errmsg(ctx));
    mha_module_free(m);
    mha_ctx_free(ctx);
}

static void *worker(void *arg) {
    /* start only once the poker pokes: on a loaded machine it could otherwise first run after
     * every worker had finished, and poke nothing */
    while (!atomic_load(&poker_running)) sched_yield();
    run_layer(arg);
    atomic_fetch_sub(&workers_left, 1);
    return NULL;
}

/* Touches the fault-injection countdown (disarmed) and reads the allocation count while the
 * workers allocate. */
static void *poker(void *arg) {
    long *seen = arg;
    do {
        mha__fault_after(-1);
        *seen = mha__alloc_count();
        atomic_store(&poker_running, 1);
    } while (atomic_load(&workers_left) > 0);
    return NULL;
}

TEST(contexts_on_threads_give_lone_results) {
    static result ref, res[NTHREADS];
    run_layer(&ref);
    if (ref.st) FAILF("lone run: %s", ref.msg);
    ASSERT_EQ(ref.st, MHA_OK);
    pthread_t t[NTHREADS], p;
    long seen = 0;
    atomic_store(&workers_left, NTHREADS);
    atomic_store(&poker_running, 0);
    ASSERT_EQ(pthread_create(&p, NULL, poker, &seen), 0);
    for (int i = 0; i < NTHREADS; i++) ASSERT_EQ(pthread_create(&t[i], NULL, worker, &res[i]), 0);
    for (int i = 0; i < NTHREADS; i++) pthread_join(t[i], NULL);
    pthread_join(p, NULL);
    for (int i = 0; i < NTHREADS; i++) {
        if (res[i].st) FAILF("thread %d: %s", i, res[i].msg);
        ASSERT_EQ(res[i].st, MHA_OK);
        ASSERT_TRUE(memcmp(res[i].y, ref.y, sizeof ref.y) == 0);
        ASSERT_TRUE(memcmp(res[i].dx, ref.dx, sizeof ref.dx) == 0);
        ASSERT_TRUE(memcmp(res[i].gw, ref.gw, sizeof ref.gw) == 0);
    }
    ASSERT_TRUE(seen > 0);
}

int main(void) {
    RUN(contexts_on_threads_give_lone_results);
    return harness_report();
}
