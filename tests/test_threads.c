/* test_threads.c - results are bitwise identical for any thread count: the module's forward
 * (output, weights) and backward (input and every parameter gradient), self- and
 * cross-attention, with masks and dropout, on every kernel path. Shapes are large enough to
 * cut through the attention tiles and to make every parallel loop split. */
#include "harness.h"

typedef struct {
    int64_t E, H, kdim, vdim, B, L, S;
    int self, causal, dropout, padding;
} tcase;

typedef struct {
    float *y, *w, *dq, *dk, *dv, *grads;
    int64_t ny, nw, nq, nk, nv, ng;
} outputs;

static float frand(uint64_t *s) {
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(*s >> 40) / (double)(1ull << 24) * 2.0 - 1.0);
}

static void outputs_free(outputs *o) {
    free(o->y), free(o->w), free(o->dq), free(o->dk), free(o->dv), free(o->grads);
}

/* Runs forward + backward with nt threads; fills o. Returns 0 on success. */
static int run(const tcase *c, int nt, mha_isa isa, outputs *o) {
    mha_ctx *ctx;
    mha_module *m;
    if (mha_ctx_create(&ctx) != MHA_OK) return 1;
    mha_ctx_set_threads(ctx, nt);
    if (mha_ctx_set_isa(ctx, isa) != MHA_OK) return mha_ctx_free(ctx), 1;
    mha_config cfg = mha_config_default(c->E, c->H);
    cfg.kdim = c->kdim, cfg.vdim = c->vdim, cfg.seed = 11, cfg.dropout = c->dropout ? 0.2f : 0;
    if (mha_module_create(ctx, &cfg, &m) != MHA_OK) return mha_ctx_free(ctx), 1;
    uint64_t s = 5;
    const int64_t B = c->B, L = c->L, S = c->self ? c->L : c->S, E = c->E, H = c->H;
    float *x = malloc(sizeof(float) * B * L * E), *xk = NULL, *xv = NULL;
    for (int64_t i = 0; i < B * L * E; i++) x[i] = frand(&s);
    if (!c->self) {
        xk = malloc(sizeof(float) * B * S * c->kdim);
        xv = malloc(sizeof(float) * B * S * c->vdim);
        for (int64_t i = 0; i < B * S * c->kdim; i++) xk[i] = frand(&s);
        for (int64_t i = 0; i < B * S * c->vdim; i++) xv[i] = frand(&s);
    }
    uint8_t *pad = calloc((size_t)(B * S), 1);
    for (int64_t b = 0; b < B; b++)
        for (int64_t j = S - 1 - 17 * b; j < S && j >= 0; j++) pad[b * S + j] = 1;
    o->ny = B * L * E, o->nw = B * H * L * S, o->nq = B * L * E;
    o->nk = c->self ? 0 : B * S * c->kdim, o->nv = c->self ? 0 : B * S * c->vdim;
    o->y = malloc(sizeof(float) * o->ny), o->w = malloc(sizeof(float) * o->nw);
    o->dq = malloc(sizeof(float) * o->nq);
    o->dk = c->self ? NULL : malloc(sizeof(float) * o->nk);
    o->dv = c->self ? NULL : malloc(sizeof(float) * o->nv);
    float *dy = malloc(sizeof(float) * o->ny);
    for (int64_t i = 0; i < o->ny; i++) dy[i] = frand(&s);
    int64_t sq[3] = {B, L, E}, sk[3] = {B, S, c->kdim}, sv[3] = {B, S, c->vdim},
            sw[4] = {B, H, L, S};
    mha_tensor tq = mha_tensor_make(x, 3, sq), ty = mha_tensor_make(o->y, 3, sq);
    mha_tensor tk = mha_tensor_make(xk, 3, sk), tv = mha_tensor_make(xv, 3, sv);
    mha_tensor tw = mha_tensor_make(o->w, 4, sw), tdy = mha_tensor_make(dy, 3, sq);
    mha_tensor tdq = mha_tensor_make(o->dq, 3, sq), tdk = mha_tensor_make(o->dk, 3, sk);
    mha_tensor tdv = mha_tensor_make(o->dv, 3, sv);
    mha_mask mask = mha_mask_default();
    mask.causal = c->causal ? MHA_CAUSAL_BOTTOM_RIGHT : MHA_CAUSAL_NONE;
    if (c->padding) mask.key_padding = pad;
    mha_forward_opts fo = mha_forward_opts_default();
    fo.training = c->dropout;
    fo.average_weights = 0;
    int rc = mha_module_forward(ctx, m, &fo, &tq, c->self ? NULL : &tk, c->self ? NULL : &tv, &mask,
                                &ty, &tw) != MHA_OK;
    if (!rc)
        rc = mha_module_backward(ctx, m, &tdy, &tdq, c->self ? NULL : &tdk,
                                 c->self ? NULL : &tdv) != MHA_OK;
    if (rc) printf("  run failed: %s\n", mha_ctx_errmsg(ctx));
    o->ng = 0;
    for (int i = 0; i < mha_module_param_count(m); i++) {
        mha_tensor g;
        mha_module_param(ctx, m, mha_module_param_name(m, i), NULL, &g);
        o->ng += mha_tensor_numel(&g);
    }
    o->grads = malloc(sizeof(float) * o->ng);
    for (int i = 0, off = 0; i < mha_module_param_count(m); i++) {
        mha_tensor g;
        mha_module_param(ctx, m, mha_module_param_name(m, i), NULL, &g);
        memcpy(o->grads + off, g.data, sizeof(float) * mha_tensor_numel(&g));
        off += (int)mha_tensor_numel(&g);
    }
    free(x), free(xk), free(xv), free(pad), free(dy);
    mha_module_free(m);
    mha_ctx_free(ctx);
    return rc;
}

static int same(const char *what, const float *a, const float *b, int64_t n, int nt, mha_isa isa) {
    if (n && memcmp(a, b, sizeof(float) * (size_t)n) != 0) {
        int64_t i = 0;
        while (i < n && memcmp(a + i, b + i, sizeof(float)) == 0) i++;
        printf("  %s differs with %d threads on %s at [%lld]: %.9g vs %.9g (1 thread)\n", what, nt,
               mha_isa_name(isa), (long long)i, b[i], a[i]);
        return 0;
    }
    return 1;
}

static void check_case(const tcase *c) {
    for (int isa = MHA_ISA_GENERIC; isa <= MHA_ISA_AVX512; isa++) {
        if (!mha_isa_supported((mha_isa)isa)) continue;
        outputs ref, o;
        ASSERT_EQ(run(c, 1, (mha_isa)isa, &ref), 0);
        for (int nt = 2; nt <= 3; nt++) {
            ASSERT_EQ(run(c, nt, (mha_isa)isa, &o), 0);
            int ok = same("output", ref.y, o.y, o.ny, nt, isa) &&
                     same("weights", ref.w, o.w, o.nw, nt, isa) &&
                     same("dquery", ref.dq, o.dq, o.nq, nt, isa) &&
                     same("dkey", ref.dk, o.dk, o.nk, nt, isa) &&
                     same("dvalue", ref.dv, o.dv, o.nv, nt, isa) &&
                     same("parameter gradients", ref.grads, o.grads, o.ng, nt, isa);
            outputs_free(&o);
            if (!ok) {
                outputs_free(&ref);
                FAILF("results depend on the thread count");
                return;
            }
        }
        outputs_free(&ref);
    }
}

TEST(self_attention_causal_dropout_is_thread_independent) {
    tcase c = {64, 4, 64, 64, 2, 150, 150, 1, 1, 1, 1};
    check_case(&c);
}

TEST(cross_attention_padding_is_thread_independent) {
    tcase c = {48, 3, 40, 24, 3, 70, 201, 0, 0, 0, 1};
    check_case(&c);
}

TEST(single_head_single_batch_is_thread_independent) {
    tcase c = {32, 1, 32, 32, 1, 300, 300, 1, 1, 0, 0};
    check_case(&c);
}

int main(void) {
    RUN(self_attention_causal_dropout_is_thread_independent);
    RUN(cross_attention_padding_is_thread_independent);
    RUN(single_head_single_batch_is_thread_independent);
    return harness_report();
}
