/* test_module_bind.c - what a framework binding needs from the module (the Python package uses
 * all three): parameters in caller-owned memory (mha_module_param_bind), saved forwards moved
 * out and back so that several forwards can precede their backwards (mha_module_saved_take /
 * _restore), and a dropout stream positioned per call (mha_module_set_dropout_rng). Each is
 * checked bitwise against a plain module doing the same computation the ordinary way. Also the
 * forward's scratch (staging rows for a strided output) kept between calls. */
#include "harness.h"
#include "core/internal.h"        /* mha__alloc_count */
#include "attn/module_internal.h" /* the kept scratch m->fws */

#include <string.h>

enum {
    E = 16,
    H = 4,
    B = 2,
    L = 5,
    N = B * L * E
};

static void fill(float *a, int64_t n, double f, double ph) {
    for (int64_t i = 0; i < n; i++) a[i] = (float)cos((double)i * f + ph);
}

/* A training forward of x (self-attention, saved for the backward) into y. */
static mha_status fwd(mha_ctx *ctx, mha_module *m, float *x, float *y) {
    int64_t s[3] = {B, L, E};
    mha_tensor tx = mha_tensor_make(x, 3, s), ty = mha_tensor_make(y, 3, s);
    mha_forward_opts fo = mha_forward_opts_default();
    fo.training = 1;
    return mha_module_forward(ctx, m, &fo, &tx, NULL, NULL, NULL, &ty, NULL);
}

/* The backward of the module's saved forward for dy into dx. */
static mha_status bwd(mha_ctx *ctx, mha_module *m, float *dy, float *dx) {
    int64_t s[3] = {B, L, E};
    mha_tensor tdy = mha_tensor_make(dy, 3, s), tdx = mha_tensor_make(dx, 3, s);
    return mha_module_backward(ctx, m, &tdy, &tdx, NULL, NULL);
}

/* Every parameter value and gradient of a and b bitwise equal. */
static int same_params_and_grads(mha_ctx *ctx, mha_module *a, mha_module *b) {
    for (int i = 0; i < mha_module_param_count(a); i++) {
        mha_tensor va, ga, vb, gb;
        const char *name = mha_module_param_name(a, i);
        if (mha_module_param(ctx, a, name, &va, &ga) || mha_module_param(ctx, b, name, &vb, &gb))
            return 0;
        size_t n = sizeof(float) * (size_t)mha_tensor_numel(&va);
        if (memcmp(va.data, vb.data, n) || memcmp(ga.data, gb.data, n)) return 0;
    }
    return 1;
}

static mha_module *make(mha_ctx *ctx, uint64_t seed, float dropout) {
    mha_config cfg = mha_config_default(E, H);
    cfg.seed = seed;
    cfg.dropout = dropout;
    mha_module *m = NULL;
    if (mha_module_create(ctx, &cfg, &m) != MHA_OK) return NULL;
    return m;
}

/* Two forwards, then their backwards in the other order, through take / restore: the same
 * outputs, input gradients and parameter gradients as forward-backward twice (dropout on, so
 * each saved forward also carries its own dropout position). */
TEST(saved_forwards_taken_and_restored) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    mha_module *a = make(ctx, 3, 0.25f), *b = make(ctx, 3, 0.25f);
    ASSERT_TRUE(a && b);
    static float x1[N], x2[N], dy1[N], dy2[N], ya1[N], ya2[N], yb1[N], yb2[N];
    static float dxa1[N], dxa2[N], dxb1[N], dxb2[N];
    fill(x1, N, 0.37, 0.0), fill(x2, N, 0.23, 1.0), fill(dy1, N, 0.29, 2.0);
    fill(dy2, N, 0.11, 3.0);
    /* b: the ordinary way. */
    ASSERT_OK(ctx, fwd(ctx, b, x1, yb1));
    ASSERT_OK(ctx, bwd(ctx, b, dy1, dxb1));
    ASSERT_OK(ctx, fwd(ctx, b, x2, yb2));
    ASSERT_OK(ctx, bwd(ctx, b, dy2, dxb2));
    /* a: forward, forward, then backward 2, backward 1. */
    mha_module_saved *s1, *s2;
    ASSERT_OK(ctx, fwd(ctx, a, x1, ya1));
    ASSERT_OK(ctx, mha_module_saved_take(ctx, a, &s1));
    ASSERT_EQ(bwd(ctx, a, dy1, dxa1), MHA_ERR_STATE); /* taken: nothing saved now */
    ASSERT_OK(ctx, fwd(ctx, a, x2, ya2));
    ASSERT_OK(ctx, mha_module_saved_take(ctx, a, &s2));
    memset(x1, 0, sizeof x1), memset(x2, 0, sizeof x2); /* the saved copies are what counts */
    ASSERT_OK(ctx, mha_module_saved_restore(ctx, a, s2));
    ASSERT_OK(ctx, bwd(ctx, a, dy2, dxa2));
    ASSERT_OK(ctx, mha_module_saved_restore(ctx, a, s1));
    ASSERT_OK(ctx, bwd(ctx, a, dy1, dxa1));
    ASSERT_TRUE(memcmp(ya1, yb1, sizeof ya1) == 0 && memcmp(ya2, yb2, sizeof ya2) == 0);
    ASSERT_TRUE(memcmp(dxa1, dxb1, sizeof dxa1) == 0 && memcmp(dxa2, dxb2, sizeof dxa2) == 0);
    ASSERT_TRUE(same_params_and_grads(ctx, a, b)); /* the sums of both backwards */
    /* Errors: nothing to take; a handle of another module; NULLs. */
    mha_module_saved *s = NULL;
    ASSERT_OK(ctx, fwd(ctx, b, x1, yb1));
    ASSERT_OK(ctx, mha_module_saved_take(ctx, b, &s));
    ASSERT_EQ(mha_module_saved_take(ctx, b, &s1), MHA_ERR_STATE);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_module_saved_take: no saved forward");
    ASSERT_EQ(mha_module_saved_restore(ctx, a, s), MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "s: got the saved forward of another module");
    ASSERT_EQ(mha_module_saved_restore(ctx, a, NULL), MHA_ERR_INVALID_ARG);
    ASSERT_EQ(mha_module_saved_take(ctx, NULL, &s1), MHA_ERR_INVALID_ARG);
    ASSERT_EQ(mha_module_saved_take(ctx, a, NULL), MHA_ERR_INVALID_ARG);
    mha_module_saved_free(s); /* never restored: freed on its own */
    mha_module_saved_free(NULL);
    mha_module_free(a);
    mha_module_free(b);
    mha_ctx_free(ctx);
}

/* Parameters bound to caller memory: the same results as the module's own copies, gradients
 * accumulated into the caller's buffers, changes to the caller's values seen by the next
 * forward, and the caller's memory left alone by mha_module_free. */
TEST(parameters_bound_to_caller_memory) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    mha_module *a = make(ctx, 5, 0.0f), *b = make(ctx, 5, 0.0f);
    ASSERT_TRUE(a && b);
    float *vals[8], *grads[8];
    int np = mha_module_param_count(a);
    for (int i = 0; i < np; i++) {
        mha_tensor v;
        ASSERT_OK(ctx, mha_module_param(ctx, a, mha_module_param_name(a, i), &v, NULL));
        size_t n = (size_t)mha_tensor_numel(&v);
        vals[i] = malloc(sizeof(float) * n), grads[i] = calloc(n, sizeof(float));
        memcpy(vals[i], v.data, sizeof(float) * n);
        memset(v.data, 0, sizeof(float) * n); /* a's own copy no longer matters */
        ASSERT_OK(ctx, mha_module_param_bind(ctx, a, mha_module_param_name(a, i), vals[i], NULL));
        ASSERT_OK(ctx, mha_module_param_bind(ctx, a, mha_module_param_name(a, i), NULL, grads[i]));
        mha_tensor got, gg;
        ASSERT_OK(ctx, mha_module_param(ctx, a, mha_module_param_name(a, i), &got, &gg));
        ASSERT_TRUE(got.data == vals[i] && gg.data == grads[i]);
    }
    static float x[N], dy[N], ya[N], yb[N], dxa[N], dxb[N];
    fill(x, N, 0.31, 0.5), fill(dy, N, 0.17, 1.5);
    for (int round = 0; round < 2; round++) {
        ASSERT_OK(ctx, fwd(ctx, a, x, ya));
        ASSERT_OK(ctx, bwd(ctx, a, dy, dxa));
        ASSERT_OK(ctx, fwd(ctx, b, x, yb));
        ASSERT_OK(ctx, bwd(ctx, b, dy, dxb));
        ASSERT_TRUE(memcmp(ya, yb, sizeof ya) == 0 && memcmp(dxa, dxb, sizeof dxa) == 0);
        ASSERT_TRUE(same_params_and_grads(ctx, a, b));
        /* Change out_proj.weight in both places: the next round must see it. */
        mha_tensor wb;
        ASSERT_OK(ctx, mha_module_param(ctx, b, "out_proj.weight", &wb, NULL));
        for (int64_t k = 0; k < E * E; k++) wb.data[k] *= 2.0f, vals[np - 2][k] *= 2.0f;
    }
    ASSERT_EQ(mha_module_param_bind(ctx, a, "no_such", vals[0], NULL), MHA_ERR_NOT_FOUND);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "expected one of in_proj_weight, in_proj_bias");
    ASSERT_EQ(mha_module_param_bind(ctx, NULL, "in_proj_weight", vals[0], NULL),
              MHA_ERR_INVALID_ARG);
    mha_module_free(a); /* must not free vals / grads */
    for (int i = 0; i < np; i++) free(vals[i]), free(grads[i]);
    mha_module_free(b);
    mha_ctx_free(ctx);
}

/* mha_module_set_dropout_rng: a module positioned at (seed, offset) draws the dropout masks a
 * module created with that seed draws at that offset. */
TEST(dropout_stream_positioned) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    mha_module *a = make(ctx, 11, 0.5f), *b = make(ctx, 11, 0.5f), *c = make(ctx, 11, 0.5f);
    ASSERT_TRUE(a && b && c);
    static float x[N], y0[N], y1[N], yb[N];
    fill(x, N, 0.41, 0.25);
    ASSERT_OK(ctx, fwd(ctx, a, x, y0)); /* (11, 0) */
    ASSERT_OK(ctx, fwd(ctx, a, x, y1)); /* (11, 1) */
    ASSERT_TRUE(memcmp(y0, y1, sizeof y0) != 0);
    /* b: its seed replaced by another, then back to (11, 1): a's second forward. */
    ASSERT_OK(ctx, mha_module_set_dropout_rng(ctx, b, 12345, 0));
    ASSERT_OK(ctx, fwd(ctx, b, x, yb));
    ASSERT_TRUE(memcmp(yb, y0, sizeof yb) != 0 && memcmp(yb, y1, sizeof yb) != 0);
    ASSERT_OK(ctx, mha_module_set_dropout_rng(ctx, b, 11, 1));
    ASSERT_OK(ctx, fwd(ctx, b, x, yb));
    ASSERT_TRUE(memcmp(yb, y1, sizeof yb) == 0);
    ASSERT_OK(ctx, fwd(ctx, c, x, yb)); /* untouched: (11, 0) */
    ASSERT_TRUE(memcmp(yb, y0, sizeof yb) == 0);
    ASSERT_EQ(mha_module_set_dropout_rng(ctx, NULL, 1, 0), MHA_ERR_INVALID_ARG);
    mha_module_free(a);
    mha_module_free(b);
    mha_module_free(c);
    mha_ctx_free(ctx);
}

/* An output whose strides rule out writing rows in place (a [B, L, E] view of [L, B, E]
 * memory, as a sequence-first caller has) goes through staging rows, kept by the module for
 * the next call (no allocation), released by a call that needs none, the same bits either
 * way; averaged weights need no scratch (the core averages them itself). */
TEST(forward_scratch_kept_between_calls) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    mha_module *m = make(ctx, 9, 0.0f), *f = make(ctx, 9, 0.0f);
    ASSERT_TRUE(m && f);
    static float x[N], y[N], yf[N], w[B * L * L], wf[B * L * L];
    fill(x, N, 0.19, 0.75);
    int64_t s[3] = {B, L, E}, st[3] = {E, B * E, 1}, ws[3] = {B, L, L};
    mha_tensor tx = mha_tensor_make(x, 3, s), ty = mha_tensor_strided(y, 3, s, st);
    mha_tensor tw = mha_tensor_make(w, 3, ws);
    mha_forward_opts fo = mha_forward_opts_default();
    fo.save_for_backward = 0;
    ASSERT_OK(ctx, mha_module_forward(ctx, m, &fo, &tx, NULL, NULL, NULL, &ty, &tw));
    void *kept = m->fws.p;
    ASSERT_TRUE(kept != NULL);
    long a0 = mha__alloc_count();
    ASSERT_OK(ctx, mha_module_forward(ctx, m, &fo, &tx, NULL, NULL, NULL, &ty, &tw));
    long a1 = mha__alloc_count();
    ASSERT_TRUE(m->fws.p == kept);
    mha_tensor tyf = mha_tensor_strided(yf, 3, s, st), twf = mha_tensor_make(wf, 3, ws);
    ASSERT_OK(ctx, mha_module_forward(ctx, f, &fo, &tx, NULL, NULL, NULL, &tyf, &twf));
    /* A fresh module allocates its kept workspace, the packing workspace and the scratch; the
     * call of the same shape none of them (the core's own per-call workspaces in both). */
    ASSERT_TRUE(a1 - a0 + 3 <= mha__alloc_count() - a1);
    ASSERT_TRUE(memcmp(y, yf, sizeof y) == 0 && memcmp(w, wf, sizeof w) == 0);
    mha_tensor tyc = mha_tensor_make(y, 3, s);
    ASSERT_OK(ctx, mha_module_forward(ctx, m, &fo, &tx, NULL, NULL, NULL, &tyc, &tw));
    ASSERT_TRUE(m->fws.p == NULL); /* contiguous rows, averaged weights: no scratch kept */
    mha_module_free(m);
    mha_module_free(f);
    mha_ctx_free(ctx);
}

/* Every parameter's value and gradient of m, back to back, into dst (n floats at most);
 * returns the count. */
static int64_t snapshot(mha_ctx *ctx, mha_module *m, float *dst, int64_t n) {
    int64_t at = 0;
    for (int i = 0; i < mha_module_param_count(m); i++) {
        mha_tensor v, g;
        if (mha_module_param(ctx, m, mha_module_param_name(m, i), &v, &g)) return -1;
        const int64_t k = mha_tensor_numel(&v);
        if (at + 2 * k > n) return -1;
        memcpy(dst + at, v.data, sizeof(float) * (size_t)k);
        memcpy(dst + at + k, g.data, sizeof(float) * (size_t)k);
        at += 2 * k;
    }
    return at;
}

/* An output of a module call that shares memory with one of the module's parameters (bound or
 * its own), or a backward's with their gradients, is refused, naming both, with nothing
 * written: writing it would change the weights the call is still reading, or the gradients
 * the backward accumulates. The forward's out and weights, the backward's input gradients,
 * the incremental forward's out (also against the cache); a view right after a bound
 * parameter is fine, and so is a forward's out in a gradient's memory (a forward never
 * touches the gradients; a framework may keep one bound whose memory it reuses). */
TEST(outputs_overlapping_the_module_refused) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    mha_module *m = make(ctx, 7, 0.0f);
    ASSERT_TRUE(m);
    /* out_proj.weight bound to wo[0, E*E), a gradient of in_proj_weight bound to gin */
    static float wo[E * E + N], gin[3 * E * E], x[N], y[N], dy[N], dx[N];
    static float snap[16 * E * E], snap2[16 * E * E];
    mha_tensor w;
    ASSERT_OK(ctx, mha_module_param(ctx, m, "out_proj.weight", &w, NULL));
    memcpy(wo, w.data, sizeof(float) * E * E);
    ASSERT_OK(ctx, mha_module_param_bind(ctx, m, "out_proj.weight", wo, NULL));
    ASSERT_OK(ctx, mha_module_param_bind(ctx, m, "in_proj_weight", NULL, gin));
    mha_tensor bias, gbias;
    ASSERT_OK(ctx, mha_module_param(ctx, m, "out_proj.bias", &bias, &gbias)); /* owned */
    fill(x, N, 0.31, 0.5), fill(dy, N, 0.17, 1.5);
    int64_t s[3] = {B, L, E};
    mha_tensor tx = mha_tensor_make(x, 3, s), ty = mha_tensor_make(y, 3, s);
    mha_forward_opts fo = mha_forward_opts_default();
    ASSERT_OK(ctx, mha_module_forward(ctx, m, &fo, &tx, NULL, NULL, NULL, &ty, NULL));
    const int64_t ns = snapshot(ctx, m, snap, 16 * E * E);
    ASSERT_TRUE(ns > 0);
    static const struct {
        float *base;
        int64_t off;
        const char *msg;
    } fwd_cases[] = {
        {wo, 0, "mha_module_forward: out overlaps the module's parameter out_proj.weight ("},
        {wo, E * E - 1, "out overlaps the module's parameter out_proj.weight"}, /* one element */
    };
    for (size_t i = 0; i < sizeof fwd_cases / sizeof fwd_cases[0]; i++) {
        mha_tensor o = mha_tensor_make(fwd_cases[i].base + fwd_cases[i].off, 3, s);
        ASSERT_EQ(mha_module_forward(ctx, m, &fo, &tx, NULL, NULL, NULL, &o, NULL),
                  MHA_ERR_INVALID_ARG);
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), fwd_cases[i].msg);
        ASSERT_EQ(snapshot(ctx, m, snap2, 16 * E * E), ns);
        ASSERT_TRUE(memcmp(snap, snap2, sizeof(float) * (size_t)ns) == 0);
    }
    /* the module's own memory (not bound): out_proj.bias [E] and its gradient, as the out
     * [1, E] of an unbatched query of one token and the averaged weights [4, 4] of one of 4 */
    int64_t s1e[2] = {1, E}, s4[2] = {4, E}, sw4[2] = {4, 4};
    mha_tensor x1 = mha_tensor_make(x, 2, s1e), o = mha_tensor_make(bias.data, 2, s1e);
    ASSERT_EQ(mha_module_forward(ctx, m, &fo, &x1, NULL, NULL, NULL, &o, NULL),
              MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "out overlaps the module's parameter out_proj.bias");
    mha_tensor x4 = mha_tensor_make(x, 2, s4), y4 = mha_tensor_make(y, 2, s4);
    mha_tensor tw = mha_tensor_make(bias.data, 2, sw4);
    ASSERT_EQ(mha_module_forward(ctx, m, &fo, &x4, NULL, NULL, NULL, &y4, &tw),
              MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx),
                        "weights overlaps the module's parameter out_proj.bias");
    ASSERT_EQ(snapshot(ctx, m, snap2, 16 * E * E), ns);
    ASSERT_TRUE(memcmp(snap, snap2, sizeof(float) * (size_t)ns) == 0);
    /* a forward's out and weights in gradients' memory: accepted, the same out */
    o = mha_tensor_make(gin + 2 * E * E, 3, s);
    ASSERT_OK(ctx, mha_module_forward(ctx, m, &fo, &tx, NULL, NULL, NULL, &o, NULL));
    ASSERT_TRUE(memcmp(gin + 2 * E * E, y, sizeof y) == 0);
    tw = mha_tensor_make(gbias.data, 2, sw4);
    mha_tensor d4 = mha_tensor_make(dx, 2, s4); /* y stays the first forward's out */
    ASSERT_OK(ctx, mha_module_forward(ctx, m, &fo, &x4, NULL, NULL, NULL, &d4, &tw));
    memset(gin, 0, sizeof gin), mha_module_zero_grad(m); /* the snapshot's gradients again */
    ASSERT_EQ(snapshot(ctx, m, snap2, 16 * E * E), ns);
    ASSERT_TRUE(memcmp(snap, snap2, sizeof(float) * (size_t)ns) == 0);
    /* right after the bound weight: accepted, the same output */
    o = mha_tensor_make(wo + E * E, 3, s);
    ASSERT_OK(ctx, mha_module_forward(ctx, m, &fo, &tx, NULL, NULL, NULL, &o, NULL));
    ASSERT_TRUE(memcmp(wo + E * E, y, sizeof y) == 0);
    /* the backward's input gradients */
    ASSERT_OK(ctx, mha_module_forward(ctx, m, &fo, &tx, NULL, NULL, NULL, &ty, NULL));
    mha_tensor tdy = mha_tensor_make(dy, 3, s), tdx = mha_tensor_make(gin + E, 3, s);
    ASSERT_EQ(mha_module_backward(ctx, m, &tdy, &tdx, NULL, NULL), MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(
        mha_ctx_errmsg(ctx),
        "mha_module_backward: dquery overlaps the module's gradient of in_proj_weight (");
    tdx = mha_tensor_make(wo + 3, 3, s);
    ASSERT_EQ(mha_module_backward(ctx, m, &tdy, &tdx, NULL, NULL), MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx),
                        "mha_module_backward: dquery overlaps the module's parameter "
                        "out_proj.weight (");
    ASSERT_EQ(snapshot(ctx, m, snap2, 16 * E * E), ns);
    ASSERT_TRUE(memcmp(snap, snap2, sizeof(float) * (size_t)ns) == 0);
    tdx = mha_tensor_make(dx, 3, s); /* the saved forward is still there */
    ASSERT_OK(ctx, mha_module_backward(ctx, m, &tdy, &tdx, NULL, NULL));
    ASSERT_EQ(snapshot(ctx, m, snap, 16 * E * E), ns); /* the gradients it accumulated */
    /* the incremental forward: against the parameters and the cache */
    mha_kv_cache *c;
    ASSERT_OK(ctx, mha_module_kv_cache_create(ctx, m, B, 8, &c));
    mha_tensor kc, vc;
    ASSERT_OK(ctx, mha_kv_cache_views(ctx, c, &kc, &vc));
    int64_t s1[3] = {B, 1, E};
    mha_tensor q1 = mha_tensor_make(x, 3, s1), o1 = mha_tensor_make(wo + 5, 3, s1);
    mha_tensor y1 = mha_tensor_make(y, 3, s1);
    ASSERT_OK(ctx, mha_module_forward_cached(ctx, m, c, &q1, NULL, &y1));
    ASSERT_EQ(mha_module_forward_cached(ctx, m, c, &q1, NULL, &o1), MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(
        mha_ctx_errmsg(ctx),
        "mha_module_forward_cached: out overlaps the module's parameter out_proj.weight (");
    const mha_tensor *cv[2] = {&kc, &vc};
    static const char *const cn[2] = {"out overlaps the cache's keys", "the cache's values"};
    for (int i = 0; i < 2; i++) {
        size_t nb = sizeof(float) * (size_t)mha_tensor_numel(cv[i]);
        float *before = malloc(nb);
        memcpy(before, cv[i]->data, nb);
        o1 = mha_tensor_make(cv[i]->data + E, 3, s1);
        ASSERT_EQ(mha_module_forward_cached(ctx, m, c, &q1, NULL, &o1), MHA_ERR_INVALID_ARG);
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), cn[i]);
        ASSERT_TRUE(memcmp(before, cv[i]->data, nb) == 0);
        free(before);
    }
    ASSERT_EQ(mha_kv_cache_length(c, 0), 1); /* the refused calls appended nothing */
    ASSERT_EQ(snapshot(ctx, m, snap2, 16 * E * E), ns);
    ASSERT_TRUE(memcmp(snap, snap2, sizeof(float) * (size_t)ns) == 0);
    mha_kv_cache_free(c);
    mha_module_free(m);
    mha_ctx_free(ctx);
}

/* The parameters' gradients, accumulated into by a backward, bound (one at a time, checked by
 * nothing then) to memory that a parameter's value, another gradient or dout holds: the
 * backward refuses, naming both, with nothing written (it used to add a gradient into the
 * weight, sum two gradients into one place, or write into dout); rebound apart, the saved
 * forward's backward runs. */
TEST(gradients_overlapping_refused) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    static float g[4 * E * E], gw[3 * E * E], x[N], y[N], dy[N], dy0[N], dx[N];
    static float snap[16 * E * E], snap2[16 * E * E];
    static const char *const msg[3] = {
        "mha_module_backward: the module's gradient of in_proj_weight overlaps the module's "
        "parameter in_proj_weight (",
        "mha_module_backward: the module's gradient of in_proj_weight overlaps the module's "
        "gradient of out_proj.weight (",
        "mha_module_backward: the module's gradient of out_proj.bias overlaps dout ("};
    fill(x, N, 0.31, 0.5), fill(dy, N, 0.17, 1.5);
    memcpy(dy0, dy, sizeof dy);
    for (int c = 0; c < 3; c++) {
        mha_module *m = make(ctx, 11, 0.0f);
        ASSERT_TRUE(m);
        mha_tensor w;
        ASSERT_OK(ctx, mha_module_param(ctx, m, "in_proj_weight", &w, NULL));
        if (c == 0) ASSERT_OK(ctx, mha_module_param_bind(ctx, m, "in_proj_weight", NULL, w.data));
        if (c == 1) {
            ASSERT_OK(ctx, mha_module_param_bind(ctx, m, "in_proj_weight", NULL, g));
            ASSERT_OK(ctx,
                      mha_module_param_bind(ctx, m, "out_proj.weight", NULL, g + 3 * E * E - 1));
        }
        if (c == 2) ASSERT_OK(ctx, mha_module_param_bind(ctx, m, "out_proj.bias", NULL, dy + 3));
        ASSERT_OK(ctx, fwd(ctx, m, x, y));
        const int64_t ns = snapshot(ctx, m, snap, 16 * E * E);
        ASSERT_TRUE(ns > 0);
        ASSERT_EQ(bwd(ctx, m, dy, dx), MHA_ERR_INVALID_ARG);
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), msg[c]);
        ASSERT_EQ(snapshot(ctx, m, snap2, 16 * E * E), ns);
        ASSERT_TRUE(memcmp(snap, snap2, sizeof(float) * (size_t)ns) == 0);
        ASSERT_TRUE(memcmp(dy, dy0, sizeof dy) == 0);
        /* apart again: the saved forward is still there */
        const char *name = c == 2 ? "out_proj.bias" : "in_proj_weight";
        memset(gw, 0, sizeof gw);
        ASSERT_OK(ctx, mha_module_param_bind(ctx, m, name, NULL, gw));
        ASSERT_OK(ctx, bwd(ctx, m, dy, dx));
        mha_module_free(m);
    }
    mha_ctx_free(ctx);
}

int main(void) {
    RUN(saved_forwards_taken_and_restored);
    RUN(parameters_bound_to_caller_memory);
    RUN(outputs_overlapping_the_module_refused);
    RUN(gradients_overlapping_refused);
    RUN(dropout_stream_positioned);
    RUN(forward_scratch_kept_between_calls);
    return harness_report();
}
