/* test_module_dtype.c - the module in bfloat16 and float16 (mha_config.dtype): parameters,
 * inputs, outputs and gradients in the dtype, products accumulated in float32.
 *
 * The reference is a float32 module holding the same parameter values (the bf16 / f16 ones,
 * converted exactly) run on the same inputs: the low-precision layer differs from it only by
 * the rounding of its activations (q, k, v, the attention output, P in the bf16 kernels) and
 * of its results, a few units of 2^-8 relative for bf16 (2^-11 for f16) of the values' scale.
 * A structural mistake (a missing bias, a wrong row stride, the wrong weight) is off by the
 * values' own size. Every ISA, self- and cross-attention, masks, both dtypes. */
#include "harness.h"
#include "core/internal.h" /* mha__fault_after */
#include "kernels/cvt.h"

#include <unistd.h>

static uint64_t rng = 0x5eed5eedull;
static float frand(void) { /* [-1, 1) */
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(rng >> 40) / (double)(1ull << 23) - 1.0);
}

static size_t es_of(mha_dtype dt) { return dt == MHA_DTYPE_F32 ? 4 : 2; }

/* n random values of dtype dt (and their exact float32 values in f). */
static void *rand_lp(mha_dtype dt, int64_t n, float *f) {
    void *p = malloc(es_of(dt) * (size_t)(n ? n : 1));
    for (int64_t i = 0; i < n; i++) {
        mha__store_f32(dt, p, i, frand());
        f[i] = mha__load_f32(dt, p, i);
    }
    return p;
}

static void to_f32(mha_dtype dt, const void *p, float *f, int64_t n) {
    for (int64_t i = 0; i < n; i++) f[i] = mha__load_f32(dt, p, i);
}

/* The float32 module with m's parameter values (exactly). */
static mha_status f32_twin(mha_ctx *ctx, mha_module *m, mha_module **out) {
    mha_config cfg = *mha_module_config(m);
    cfg.dtype = MHA_DTYPE_F32;
    mha_status st = mha_module_create(ctx, &cfg, out);
    for (int i = 0; !st && i < mha_module_param_count(m); i++) {
        const char *name = mha_module_param_name(m, i);
        mha_tensor a, b;
        if (!(st = mha_module_param(ctx, m, name, &a, NULL)) &&
            !(st = mha_module_param(ctx, *out, name, &b, NULL)))
            st = mha_tensor_convert(ctx, &a, &b);
    }
    return st;
}

/* |got - want| <= tol * max|want| + tiny, elementwise, want a float32 reference. */
static int close_scaled(const char *what, const float *got, const float *want, int64_t n,
                        double tol) {
    double mx = 0;
    double *w = malloc(sizeof(double) * (size_t)(n ? n : 1));
    for (int64_t i = 0; i < n; i++) mx = fmax(mx, fabs(want[i])), w[i] = want[i];
    int ok = harness_near(__FILE__, __LINE__, what, got, w, n, 0, tol * mx + 1e-30);
    free(w);
    return ok;
}

typedef struct {
    int64_t B, L, S, E, H, kdim, vdim;
    int bias, cross, causal, pad, weights;
} mcase;

static const mcase cases[] = {
    {2, 7, 7, 16, 2, 0, 0, 1, 0, 0, 0, 1},    /* self-attention, weights averaged */
    {2, 9, 9, 32, 4, 0, 0, 1, 0, 1, 1, 0},    /* causal + key padding (a fully masked row) */
    {1, 5, 11, 24, 3, 12, 20, 0, 1, 0, 1, 1}, /* cross, kdim/vdim, no bias */
    {3, 33, 40, 64, 2, 0, 0, 1, 1, 0, 0, 0},  /* cross, packed weights, longer */
};

/* Runs one case in dtype dt against the float32 twin: out, weights, dquery (dkey, dvalue) and
 * every parameter gradient. */
static void run_case(mha_ctx *ctx, const mcase *c, mha_dtype dt, double tol) {
    mha_config cfg = mha_config_default(c->E, c->H);
    cfg.kdim = c->kdim, cfg.vdim = c->vdim, cfg.bias = c->bias, cfg.seed = 7, cfg.dtype = dt;
    mha_module *m = NULL, *r = NULL;
    ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &m));
    ASSERT_OK(ctx, f32_twin(ctx, m, &r));
    const int64_t B = c->B, L = c->L, S = c->S, E = c->E;
    const int64_t kd = c->kdim ? c->kdim : E, vd = c->vdim ? c->vdim : E;
    const int64_t nq = B * L * E, nk = B * S * kd, nv = B * S * vd, nw = B * L * S;
    float *fq = malloc(4 * nq), *fk = malloc(4 * nk), *fv = malloc(4 * nv), *fdo = malloc(4 * nq);
    void *q = rand_lp(dt, nq, fq), *k = rand_lp(dt, nk, fk), *v = rand_lp(dt, nv, fv);
    void *dout = rand_lp(dt, nq, fdo);
    void *y = malloc(2 * nq), *dq = malloc(2 * nq), *dk = malloc(2 * nk), *dv = malloc(2 * nv);
    float *ry = malloc(4 * nq), *rdq = malloc(4 * nq), *rdk = malloc(4 * nk), *rdv = malloc(4 * nv);
    float *w = malloc(4 * nw), *rw = malloc(4 * nw), *got = malloc(4 * (nq + nk + nv + 3 * E * E));
    uint8_t *pad = calloc((size_t)(B * S), 1);
    for (int64_t j = 0; j < S; j++) pad[j] = 1; /* batch 0: every key padded */
    for (int64_t b = 1; b < B; b++) pad[b * S + S - 1] = 1;
    int64_t sq[3] = {B, L, E}, sk[3] = {B, S, kd}, sv[3] = {B, S, vd}, sw[3] = {B, L, S};
    mha_tensor tq = mha_tensor_typed(q, dt, 3, sq, NULL), tk = mha_tensor_typed(k, dt, 3, sk, NULL);
    mha_tensor tv = mha_tensor_typed(v, dt, 3, sv, NULL), ty = mha_tensor_typed(y, dt, 3, sq, NULL);
    mha_tensor tdo = mha_tensor_typed(dout, dt, 3, sq, NULL);
    mha_tensor tdq = mha_tensor_typed(dq, dt, 3, sq, NULL),
               tdk = mha_tensor_typed(dk, dt, 3, sk, NULL);
    mha_tensor tdv = mha_tensor_typed(dv, dt, 3, sv, NULL);
    mha_tensor rq = mha_tensor_make(fq, 3, sq), rk = mha_tensor_make(fk, 3, sk);
    mha_tensor rv = mha_tensor_make(fv, 3, sv), rty = mha_tensor_make(ry, 3, sq);
    mha_tensor rtdo = mha_tensor_make(fdo, 3, sq), rtdq = mha_tensor_make(rdq, 3, sq);
    mha_tensor rtdk = mha_tensor_make(rdk, 3, sk), rtdv = mha_tensor_make(rdv, 3, sv);
    mha_tensor tw = mha_tensor_make(w, 3, sw), rtw = mha_tensor_make(rw, 3, sw);
    mha_mask mk = mha_mask_default();
    if (c->causal) mk.causal = MHA_CAUSAL_TOP_LEFT;
    if (c->pad) mk.key_padding = pad;
    mha_forward_opts o = mha_forward_opts_default();
    const int x = c->cross;
    ASSERT_OK(ctx, mha_module_forward(ctx, m, &o, &tq, x ? &tk : NULL, x ? &tv : NULL, &mk, &ty,
                                      c->weights ? &tw : NULL));
    ASSERT_OK(ctx, mha_module_forward(ctx, r, &o, &rq, x ? &rk : NULL, x ? &rv : NULL, &mk, &rty,
                                      c->weights ? &rtw : NULL));
    to_f32(dt, y, got, nq);
    if (!close_scaled("out", got, ry, nq, tol)) goto done;
    if (c->weights && !close_scaled("weights", w, rw, nw, tol)) goto done;
    ASSERT_OK(ctx, mha_module_backward(ctx, m, &tdo, &tdq, x ? &tdk : NULL, x ? &tdv : NULL));
    ASSERT_OK(ctx, mha_module_backward(ctx, r, &rtdo, &rtdq, x ? &rtdk : NULL, x ? &rtdv : NULL));
    to_f32(dt, dq, got, nq);
    if (!close_scaled("dquery", got, rdq, nq, tol)) goto done;
    if (x) {
        to_f32(dt, dk, got, nk);
        if (!close_scaled("dkey", got, rdk, nk, tol)) goto done;
        to_f32(dt, dv, got, nv);
        if (!close_scaled("dvalue", got, rdv, nv, tol)) goto done;
    }
    for (int i = 0; i < mha_module_param_count(m); i++) {
        const char *name = mha_module_param_name(m, i);
        mha_tensor g, rg;
        ASSERT_OK(ctx, mha_module_param(ctx, m, name, NULL, &g));
        ASSERT_OK(ctx, mha_module_param(ctx, r, name, NULL, &rg));
        ASSERT_EQ(g.dtype, dt);
        const int64_t n = mha_tensor_numel(&g);
        to_f32(dt, g.ptr, got, n);
        if (!close_scaled(name, got, rg.data, n, tol)) goto done;
    }
done:
    free(fq), free(fk), free(fv), free(fdo), free(q), free(k), free(v), free(dout), free(y);
    free(dq), free(dk), free(dv), free(ry), free(rdq), free(rdk), free(rdv), free(w), free(rw);
    free(got), free(pad);
    mha_module_free(m);
    mha_module_free(r);
}

TEST(forward_backward_vs_float32_twin) {
    mha_ctx *ctx;
    ASSERT_OK(NULL, mha_ctx_create(&ctx));
    FOR_EACH_ISA(ctx) {
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            run_case(ctx, &cases[i], MHA_DTYPE_BF16, 0x1p-6);
            run_case(ctx, &cases[i], MHA_DTYPE_F16, 0x1p-9);
            if (harness_cur_failed) {
                printf("  (case %zu, isa %s)\n", i, mha_isa_name(mha_ctx_isa(ctx)));
                break;
            }
        }
    }
    mha_ctx_free(ctx);
}

/* A bf16 module's result is not the float32 twin's: the test above would pass a module that
 * computed in float32 and only rounded its output. Here v's projection must be rounded to bf16
 * before the output projection: one token attends to itself (its output is its v exactly),
 * and out_proj sums two features, y_j = v_j + v_(j+1), which bf16(bf16(v_j) + bf16(v_j+1))
 * gives, and not bf16(v_j + v_j+1) for some j (checked: the test can fail). */
TEST(projections_rounded_in_dtype) {
    mha_ctx *ctx;
    ASSERT_OK(NULL, mha_ctx_create(&ctx));
    enum {
        E = 32
    };
    const mha_dtype bf = MHA_DTYPE_BF16;
    mha_config cfg = mha_config_default(E, 2);
    cfg.dtype = bf;
    mha_module *m;
    ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &m));
    mha_tensor wi, bi, wo, bo;
    ASSERT_OK(ctx, mha_module_param(ctx, m, "in_proj_weight", &wi, NULL));
    ASSERT_OK(ctx, mha_module_param(ctx, m, "in_proj_bias", &bi, NULL));
    ASSERT_OK(ctx, mha_module_param(ctx, m, "out_proj.weight", &wo, NULL));
    ASSERT_OK(ctx, mha_module_param(ctx, m, "out_proj.bias", &bo, NULL));
    ASSERT_EQ(wi.dtype, bf);
    for (int64_t i = 0; i < E * E; i++)
        mha__store_f32(bf, wo.ptr, i, i / E == i % E || (i / E + 1) % E == i % E);
    for (int64_t i = 0; i < E; i++) mha__store_f32(bf, bo.ptr, i, 0);
    for (int64_t i = 0; i < 3 * E; i++) mha__store_f32(bf, bi.ptr, i, 0.001f * (float)i);
    float xf[E], vr[E], vx[E], want[E];
    void *x = rand_lp(bf, E, xf);
    for (int64_t j = 0; j < E; j++) { /* v = x Wv^T + bv in float64: rounded (vr) or not (vx) */
        double s = mha__load_f32(bf, bi.ptr, 2 * E + j);
        for (int64_t t = 0; t < E; t++)
            s += (double)xf[t] * mha__load_f32(bf, wi.ptr, (2 * E + j) * E + t);
        vx[j] = (float)s;
        vr[j] = mha__bf16_to_f32(mha__f32_to_bf16((float)s));
    }
    int differs = 0;
    for (int64_t j = 0; j < E; j++) {
        want[j] = mha__bf16_to_f32(mha__f32_to_bf16(vr[j] + vr[(j + 1) % E]));
        differs |= want[j] != mha__bf16_to_f32(mha__f32_to_bf16(vx[j] + vx[(j + 1) % E]));
    }
    ASSERT_TRUE(differs);
    uint16_t y[E];
    int64_t sh[2] = {1, E};
    mha_tensor tx = mha_tensor_typed(x, bf, 2, sh, NULL);
    mha_tensor ty = mha_tensor_typed(y, bf, 2, sh, NULL);
    FOR_EACH_ISA(ctx) {
        ASSERT_OK(ctx, mha_module_forward(ctx, m, NULL, &tx, NULL, NULL, NULL, &ty, NULL));
        for (int64_t j = 0; j < E; j++)
            if (mha__bf16_to_f32(y[j]) != want[j]) {
                FAILF("%s: y[%lld]: got %.9g, expected %.9g (v rounded to bf16, then summed)",
                      mha_isa_name(mha_ctx_isa(ctx)), (long long)j, (double)mha__bf16_to_f32(y[j]),
                      (double)want[j]);
                break;
            }
    }
    free(x);
    mha_module_free(m);
    mha_ctx_free(ctx);
}

/* Forward and backward on 1 and 2 threads: the same bits. */
TEST(threads_bitwise) {
    mha_ctx *ctx;
    ASSERT_OK(NULL, mha_ctx_create(&ctx));
    const int64_t B = 2, L = 64, E = 64, n = B * L * E;
    mha_config cfg = mha_config_default(E, 4);
    cfg.dtype = MHA_DTYPE_BF16;
    float *f = malloc(4 * n);
    void *x = rand_lp(MHA_DTYPE_BF16, n, f), *dy = rand_lp(MHA_DTYPE_BF16, n, f);
    uint16_t *y[2], *dx[2], *gw[2];
    int64_t sh[3] = {B, L, E};
    for (int t = 0; t < 2; t++) {
        mha_module *m;
        ASSERT_OK(ctx, mha_ctx_set_threads(ctx, t + 1));
        ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &m));
        y[t] = malloc(2 * n), dx[t] = malloc(2 * n), gw[t] = malloc(2 * 3 * E * E);
        mha_tensor tx = mha_tensor_typed(x, MHA_DTYPE_BF16, 3, sh, NULL);
        mha_tensor ty = mha_tensor_typed(y[t], MHA_DTYPE_BF16, 3, sh, NULL);
        mha_tensor tdy = mha_tensor_typed(dy, MHA_DTYPE_BF16, 3, sh, NULL);
        mha_tensor tdx = mha_tensor_typed(dx[t], MHA_DTYPE_BF16, 3, sh, NULL), g;
        mha_mask mk = mha_mask_default();
        mk.causal = MHA_CAUSAL_TOP_LEFT;
        ASSERT_OK(ctx, mha_module_forward(ctx, m, NULL, &tx, NULL, NULL, &mk, &ty, NULL));
        ASSERT_OK(ctx, mha_module_backward(ctx, m, &tdy, &tdx, NULL, NULL));
        ASSERT_OK(ctx, mha_module_param(ctx, m, "in_proj_weight", NULL, &g));
        memcpy(gw[t], g.ptr, 2 * 3 * E * E);
        mha_module_free(m);
    }
    ASSERT_TRUE(memcmp(y[0], y[1], 2 * n) == 0);
    ASSERT_TRUE(memcmp(dx[0], dx[1], 2 * n) == 0);
    ASSERT_TRUE(memcmp(gw[0], gw[1], 2 * 3 * E * E) == 0);
    for (int t = 0; t < 2; t++) free(y[t]), free(dx[t]), free(gw[t]);
    free(f), free(x), free(dy);
    mha_ctx_free(ctx);
}

/* Gradients accumulate: a second backward adds (each sum rounded to bf16 once). */
TEST(gradients_accumulate_in_dtype) {
    mha_ctx *ctx;
    ASSERT_OK(NULL, mha_ctx_create(&ctx));
    const int64_t L = 6, E = 16, n = L * E;
    mha_config cfg = mha_config_default(E, 2);
    cfg.dtype = MHA_DTYPE_BF16;
    mha_module *m;
    ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &m));
    float f[96], g1[3 * 16 * 16], g2[3 * 16 * 16];
    void *x = rand_lp(MHA_DTYPE_BF16, n, f), *dy = rand_lp(MHA_DTYPE_BF16, n, f);
    uint16_t y[96];
    int64_t sh[2] = {L, E};
    mha_tensor tx = mha_tensor_typed(x, MHA_DTYPE_BF16, 2, sh, NULL);
    mha_tensor ty = mha_tensor_typed(y, MHA_DTYPE_BF16, 2, sh, NULL);
    mha_tensor tdy = mha_tensor_typed(dy, MHA_DTYPE_BF16, 2, sh, NULL), g;
    ASSERT_OK(ctx, mha_module_param(ctx, m, "in_proj_weight", NULL, &g));
    ASSERT_OK(ctx, mha_module_forward(ctx, m, NULL, &tx, NULL, NULL, NULL, &ty, NULL));
    ASSERT_OK(ctx, mha_module_backward(ctx, m, &tdy, NULL, NULL, NULL));
    to_f32(MHA_DTYPE_BF16, g.ptr, g1, 3 * E * E);
    ASSERT_OK(ctx, mha_module_backward(ctx, m, &tdy, NULL, NULL, NULL));
    to_f32(MHA_DTYPE_BF16, g.ptr, g2, 3 * E * E);
    double mx = 0, bad = 0;
    for (int64_t i = 0; i < 3 * E * E; i++) {
        mx = fmax(mx, fabs(g1[i]));
        bad = fmax(bad, fabs(g2[i] - 2 * g1[i]) - 0x1p-7 * fabs(g2[i]));
    }
    ASSERT_TRUE(mx > 0);
    ASSERT_TRUE(bad <= 0);
    mha_module_zero_grad(m);
    to_f32(MHA_DTYPE_BF16, g.ptr, g2, 3 * E * E);
    for (int64_t i = 0; i < 3 * E * E; i++) ASSERT_TRUE(g2[i] == 0);
    free(x), free(dy);
    mha_module_free(m);
    mha_ctx_free(ctx);
}

static char path_buf[256];
static const char *tmp_file(const char *tag) {
    snprintf(path_buf, sizeof path_buf, "/tmp/test_module_dtype_%ld_%s.safetensors", (long)getpid(),
             tag);
    return path_buf;
}

/* state_dict / save write the dtype; loading a bf16 file keeps its bits; a float32 file is
 * rounded once. */
TEST(save_load_keeps_dtype) {
    mha_ctx *ctx;
    ASSERT_OK(NULL, mha_ctx_create(&ctx));
    mha_config cfg = mha_config_default(16, 4);
    cfg.dtype = MHA_DTYPE_BF16, cfg.seed = 3;
    mha_module *m, *m2, *f;
    ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &m));
    mha_st *sd;
    ASSERT_OK(ctx, mha_module_state_dict(ctx, m, &sd));
    const mha_array *a = mha_st_find(sd, "in_proj_weight");
    ASSERT_TRUE(a != NULL);
    ASSERT_EQ(a->dtype, MHA_DTYPE_BF16);
    mha_st_free(sd);
    const char *p = tmp_file("bf16");
    ASSERT_OK(ctx, mha_module_save(ctx, m, p));
    cfg.seed = 4; /* other initial values */
    ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &m2));
    ASSERT_OK(ctx, mha_module_load(ctx, m2, p, NULL));
    for (int i = 0; i < mha_module_param_count(m); i++) {
        mha_tensor x, y;
        const char *name = mha_module_param_name(m, i);
        ASSERT_OK(ctx, mha_module_param(ctx, m, name, &x, NULL));
        ASSERT_OK(ctx, mha_module_param(ctx, m2, name, &y, NULL));
        ASSERT_TRUE(memcmp(x.ptr, y.ptr, 2 * (size_t)mha_tensor_numel(&x)) == 0);
    }
    /* a float32 file into a bf16 module: each value rounded to nearest even */
    mha_config c32 = cfg;
    c32.dtype = MHA_DTYPE_F32;
    ASSERT_OK(ctx, mha_module_create(ctx, &c32, &f));
    mha_tensor w32, wb;
    ASSERT_OK(ctx, mha_module_param(ctx, f, "out_proj.weight", &w32, NULL));
    w32.data[0] = 1.0f + 0x1p-9f + 0x1p-20f; /* rounds up */
    w32.data[1] = 1.0f + 0x1p-9f;            /* a tie: rounds to even (1.0) */
    const char *p32 = tmp_file("f32");
    ASSERT_OK(ctx, mha_module_save(ctx, f, p32));
    ASSERT_OK(ctx, mha_module_load(ctx, m2, p32, NULL));
    ASSERT_OK(ctx, mha_module_param(ctx, m2, "out_proj.weight", &wb, NULL));
    const uint16_t *h = wb.ptr;
    ASSERT_EQ(h[0], mha__f32_to_bf16(1.0f + 0x1p-8f));
    ASSERT_EQ(h[1], mha__f32_to_bf16(1.0f));
    for (int64_t i = 2; i < 256; i++) ASSERT_EQ(h[i], mha__f32_to_bf16(w32.data[i]));
    unlink(p), unlink(p32);
    mha_module_free(m), mha_module_free(m2), mha_module_free(f);
    mha_ctx_free(ctx);
}

/* Token-by-token decoding with a bf16 module and its bf16 cache follows the full causal
 * forward (both in bf16) up to rounding. */
TEST(cached_decode_follows_full_forward) {
    mha_ctx *ctx;
    ASSERT_OK(NULL, mha_ctx_create(&ctx));
    const int64_t L = 12, E = 32, n = L * E;
    mha_config cfg = mha_config_default(E, 4);
    cfg.dtype = MHA_DTYPE_BF16;
    mha_module *m;
    ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &m));
    float *f = malloc(4 * n), *full = malloc(4 * n), *step = malloc(4 * n);
    void *x = rand_lp(MHA_DTYPE_BF16, n, f);
    uint16_t *y = malloc(2 * n), *ys = malloc(2 * n);
    int64_t sh[3] = {1, L, E}, s1[3] = {1, 1, E};
    mha_tensor tx = mha_tensor_typed(x, MHA_DTYPE_BF16, 3, sh, NULL);
    mha_tensor ty = mha_tensor_typed(y, MHA_DTYPE_BF16, 3, sh, NULL);
    mha_mask mk = mha_mask_default();
    mk.causal = MHA_CAUSAL_TOP_LEFT;
    ASSERT_OK(ctx, mha_module_forward(ctx, m, NULL, &tx, NULL, NULL, &mk, &ty, NULL));
    mha_kv_cache *kc;
    ASSERT_OK(ctx, mha_module_kv_cache_create(ctx, m, 1, L, &kc));
    for (int64_t t = 0; t < L; t++) {
        mha_tensor a = mha_tensor_typed((uint16_t *)x + t * E, MHA_DTYPE_BF16, 3, s1, NULL);
        mha_tensor b = mha_tensor_typed(ys + t * E, MHA_DTYPE_BF16, 3, s1, NULL);
        ASSERT_OK(ctx, mha_module_forward_cached(ctx, m, kc, &a, NULL, &b));
    }
    to_f32(MHA_DTYPE_BF16, y, full, n);
    to_f32(MHA_DTYPE_BF16, ys, step, n);
    close_scaled("token by token", step, full, n, 0x1p-6);
    /* a float32 query is refused by a bf16 module's cached call */
    mha_tensor q32 = mha_tensor_make(f, 3, s1);
    mha_tensor b = mha_tensor_typed(ys, MHA_DTYPE_BF16, 3, s1, NULL);
    mha_kv_cache_reset(kc);
    ASSERT_EQ(mha_module_forward_cached(ctx, m, kc, &q32, NULL, &b), MHA_ERR_UNSUPPORTED);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "query");
    mha_kv_cache_free(kc);
    free(f), free(full), free(step), free(x), free(y), free(ys);
    mha_module_free(m);
    mha_ctx_free(ctx);
}

/* Another dtype, or tensors of the wrong one: refused naming them, nothing written. */
TEST(bad_dtypes) {
    mha_ctx *ctx;
    ASSERT_OK(NULL, mha_ctx_create(&ctx));
    mha_config cfg = mha_config_default(8, 2);
    mha_module *m = NULL;
    cfg.dtype = MHA_DTYPE_I32;
    ASSERT_EQ(mha_module_create(ctx, &cfg, &m), MHA_ERR_UNSUPPORTED);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "cfg->dtype: got int32");
    ASSERT_TRUE(m == NULL);
    cfg.dtype = MHA_DTYPE_BF16;
    ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &m));
    float x32[16] = {0}, w[4];
    uint16_t xb[16] = {0}, yb[16], sentinel[16];
    memset(yb, 0xab, sizeof yb);
    memcpy(sentinel, yb, sizeof yb);
    int64_t sh[2] = {2, 8}, sw[2] = {2, 2};
    mha_tensor q32 = mha_tensor_make(x32, 2, sh), y32 = mha_tensor_make(x32, 2, sh);
    mha_tensor qb = mha_tensor_typed(xb, MHA_DTYPE_BF16, 2, sh, NULL);
    mha_tensor yb_t = mha_tensor_typed(yb, MHA_DTYPE_BF16, 2, sh, NULL);
    mha_tensor yh = mha_tensor_typed(yb, MHA_DTYPE_F16, 2, sh, NULL);
    mha_tensor wb = mha_tensor_typed(w, MHA_DTYPE_BF16, 2, sw, NULL);
    ASSERT_EQ(mha_module_forward(ctx, m, NULL, &q32, NULL, NULL, NULL, &yb_t, NULL),
              MHA_ERR_UNSUPPORTED);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "query.dtype: got float32, expected bfloat16");
    ASSERT_EQ(mha_module_forward(ctx, m, NULL, &qb, NULL, NULL, NULL, &y32, NULL),
              MHA_ERR_UNSUPPORTED);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "out.dtype");
    ASSERT_EQ(mha_module_forward(ctx, m, NULL, &qb, NULL, NULL, NULL, &yh, NULL),
              MHA_ERR_UNSUPPORTED);
    ASSERT_EQ(mha_module_forward(ctx, m, NULL, &qb, NULL, NULL, NULL, &yb_t, &wb),
              MHA_ERR_UNSUPPORTED); /* attention weights are float32 */
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "weights");
    ASSERT_TRUE(memcmp(yb, sentinel, sizeof yb) == 0);
    /* a float32 module refuses bf16 tensors, as before */
    mha_module *m32;
    cfg.dtype = MHA_DTYPE_F32;
    ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &m32));
    ASSERT_EQ(mha_module_forward(ctx, m32, NULL, &qb, NULL, NULL, NULL, &yb_t, NULL),
              MHA_ERR_UNSUPPORTED);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "query.dtype: got bfloat16, expected float32");
    mha_module_free(m32);
    mha_module_free(m);
    mha_ctx_free(ctx);
}

/* Every parameter value and gradient of m: random values of its dtype. */
static void fill_params(mha_ctx *ctx, mha_module *m) {
    const mha_dtype dt = mha_module_config(m)->dtype;
    for (int i = 0; i < mha_module_param_count(m); i++) {
        mha_tensor v, g;
        mha_module_param(ctx, m, mha_module_param_name(m, i), &v, &g);
        for (int64_t e = 0; e < mha_tensor_numel(&v); e++) {
            mha__store_f32(dt, v.ptr, e, 3 * frand());
            mha__store_f32(dt, g.ptr, e, frand() / 64);
        }
    }
}

/* A copy of every parameter value and gradient of m (values, then gradients, in order). */
static unsigned char *param_bytes(mha_ctx *ctx, mha_module *m, size_t *n) {
    const size_t es = es_of(mha_module_config(m)->dtype);
    size_t total = 0;
    for (int i = 0; i < mha_module_param_count(m); i++) {
        mha_tensor v;
        mha_module_param(ctx, m, mha_module_param_name(m, i), &v, NULL);
        total += 2 * es * (size_t)mha_tensor_numel(&v);
    }
    unsigned char *b = malloc(total), *at = b;
    for (int i = 0; i < mha_module_param_count(m); i++) {
        mha_tensor v, g;
        mha_module_param(ctx, m, mha_module_param_name(m, i), &v, &g);
        const size_t bytes = es * (size_t)mha_tensor_numel(&v);
        memcpy(at, v.ptr, bytes), memcpy(at + bytes, g.ptr, bytes);
        at += 2 * bytes;
    }
    *n = total;
    return b;
}

/* mha_module_copy from every dtype to every dtype, packed and separate projections: each value
 * and gradient as cvt.h's scalar definitions convert it (bit for bit: exact up, rounded once
 * down, bf16 <-> f16 through float32), the rest of the configuration kept, m unchanged, and
 * the copy its own (writing it leaves m alone). */
TEST(copy_converts_every_parameter) {
    mha_ctx *ctx;
    ASSERT_OK(NULL, mha_ctx_create(&ctx));
    const mha_dtype dts[3] = {MHA_DTYPE_F32, MHA_DTYPE_BF16, MHA_DTYPE_F16};
    for (int variant = 0; variant < 2; variant++)
        for (int a = 0; a < 3; a++)
            for (int b = 0; b < 3; b++) {
                mha_config cfg = mha_config_default(8, 2);
                cfg.dtype = dts[a], cfg.dropout = 0.25f, cfg.seed = 7;
                if (variant) cfg.kdim = 6, cfg.vdim = 10, cfg.bias = 0;
                mha_module *m = NULL, *c = NULL;
                ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &m));
                fill_params(ctx, m);
                size_t nb, nb2;
                unsigned char *before = param_bytes(ctx, m, &nb);
                ASSERT_OK(ctx, mha_module_copy(ctx, m, dts[b], &c));
                const mha_config *cc = mha_module_config(c), *mc = mha_module_config(m);
                ASSERT_EQ(cc->dtype, dts[b]);
                ASSERT_EQ(cc->embed_dim, mc->embed_dim);
                ASSERT_EQ(cc->num_heads, mc->num_heads);
                ASSERT_EQ(cc->kdim, mc->kdim);
                ASSERT_EQ(cc->vdim, mc->vdim);
                ASSERT_EQ(cc->bias, mc->bias);
                ASSERT_EQ(cc->seed, mc->seed);
                ASSERT_TRUE(cc->dropout == mc->dropout);
                ASSERT_EQ(mha_module_param_count(c), mha_module_param_count(m));
                for (int i = 0; i < mha_module_param_count(m); i++) {
                    const char *name = mha_module_param_name(m, i);
                    ASSERT_TRUE(strcmp(name, mha_module_param_name(c, i)) == 0);
                    mha_tensor mv, mg, cv, cg;
                    ASSERT_OK(ctx, mha_module_param(ctx, m, name, &mv, &mg));
                    ASSERT_OK(ctx, mha_module_param(ctx, c, name, &cv, &cg));
                    ASSERT_EQ(mha_tensor_numel(&cv), mha_tensor_numel(&mv));
                    ASSERT_TRUE(cv.ptr != mv.ptr && cg.ptr != mg.ptr);
                    for (int64_t e = 0; e < mha_tensor_numel(&mv); e++)
                        for (int gr = 0; gr < 2; gr++) {
                            const void *src = gr ? mg.ptr : mv.ptr, *got = gr ? cg.ptr : cv.ptr;
                            uint32_t want = 0, have = 0;
                            mha__store_f32(dts[b], &want, 0, mha__load_f32(dts[a], src, e));
                            memcpy(&have, (const char *)got + e * (int64_t)es_of(dts[b]),
                                   es_of(dts[b]));
                            if (want != have)
                                FAILF("%s -> %s, %s%s[%lld]: got bits %08x, expected %08x",
                                      mha_dtype_name(dts[a]), mha_dtype_name(dts[b]), name,
                                      gr ? " (grad)" : "", (long long)e, have, want);
                        }
                    mha__store_f32(dts[b], cv.ptr, 0, 1234.0f); /* the copy's own memory */
                }
                unsigned char *after = param_bytes(ctx, m, &nb2);
                ASSERT_TRUE(nb == nb2 && memcmp(before, after, nb) == 0);
                free(before), free(after);
                mha_module_free(c);
                mha_module_free(m);
            }
    mha_ctx_free(ctx);
}

/* A copy in the same dtype computes what m computes, bit for bit, dropout included: it starts
 * at m's position in the dropout stream. Bound parameters are copied into the copy's memory. */
TEST(copy_keeps_dropout_stream_and_unbinds) {
    mha_ctx *ctx;
    ASSERT_OK(NULL, mha_ctx_create(&ctx));
    mha_config cfg = mha_config_default(8, 2);
    cfg.dropout = 0.5f;
    mha_module *m = NULL, *c = NULL;
    ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &m));
    float wo[64];
    for (int i = 0; i < 64; i++) wo[i] = frand() / 4;
    ASSERT_OK(ctx, mha_module_param_bind(ctx, m, "out_proj.weight", wo, NULL));
    ASSERT_OK(ctx, mha_module_set_dropout_rng(ctx, m, 99, 3));
    ASSERT_OK(ctx, mha_module_copy(ctx, m, MHA_DTYPE_F32, &c));
    mha_tensor cw;
    ASSERT_OK(ctx, mha_module_param(ctx, c, "out_proj.weight", &cw, NULL));
    ASSERT_TRUE(cw.data != wo && memcmp(cw.data, wo, sizeof wo) == 0);
    float x[2 * 5 * 8], y1[80], y2[80];
    for (int i = 0; i < 80; i++) x[i] = frand();
    int64_t sh[3] = {2, 5, 8};
    mha_tensor tx = mha_tensor_make(x, 3, sh), t1 = mha_tensor_make(y1, 3, sh),
               t2 = mha_tensor_make(y2, 3, sh);
    mha_forward_opts fo = mha_forward_opts_default();
    fo.training = 1;
    for (int call = 0; call < 2; call++) { /* offsets 3, then 4, on both */
        ASSERT_OK(ctx, mha_module_forward(ctx, m, &fo, &tx, NULL, NULL, NULL, &t1, NULL));
        ASSERT_OK(ctx, mha_module_forward(ctx, c, &fo, &tx, NULL, NULL, NULL, &t2, NULL));
        ASSERT_TRUE(memcmp(y1, y2, sizeof y1) == 0);
    }
    /* and a different position gives other dropout masks (the check above can fail) */
    ASSERT_OK(ctx, mha_module_set_dropout_rng(ctx, c, 99, 0));
    ASSERT_OK(ctx, mha_module_forward(ctx, c, &fo, &tx, NULL, NULL, NULL, &t2, NULL));
    ASSERT_TRUE(memcmp(y1, y2, sizeof y1) != 0);
    mha_module_free(c);
    mha_module_free(m);
    mha_ctx_free(ctx);
}

/* Bad arguments and allocation failures: a status naming mha_module_copy, *out NULL. */
TEST(copy_errors) {
    mha_ctx *ctx;
    ASSERT_OK(NULL, mha_ctx_create(&ctx));
    mha_config cfg = mha_config_default(8, 2);
    mha_module *m = NULL, *c = (mha_module *)&cfg;
    ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &m));
    ASSERT_EQ(mha_module_copy(ctx, m, MHA_DTYPE_BF16, NULL), MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_module_copy: out: got NULL");
    ASSERT_EQ(mha_module_copy(ctx, NULL, MHA_DTYPE_BF16, &c), MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_module_copy: m: got NULL");
    ASSERT_TRUE(c == NULL);
    c = (mha_module *)&cfg;
    ASSERT_EQ(mha_module_copy(ctx, m, MHA_DTYPE_I32, &c), MHA_ERR_UNSUPPORTED);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_module_copy: dtype: got int32, expected");
    ASSERT_TRUE(c == NULL);
    long n;
    mha_status st = MHA_ERR_NOMEM;
    for (n = 0; n < 100; n++) {
        mha__fault_after(n);
        st = mha_module_copy(ctx, m, MHA_DTYPE_F16, &c);
        mha__fault_after(-1);
        if (st == MHA_OK) break;
        ASSERT_EQ(st, MHA_ERR_NOMEM);
        ASSERT_TRUE(c == NULL);
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_module_copy");
    }
    ASSERT_EQ(st, MHA_OK);
    ASSERT_TRUE(n > 2); /* the module, and each parameter's value and gradient */
    mha_module_free(c);
    mha_module_free(m);
    mha_ctx_free(ctx);
}

int main(void) {
    RUN(forward_backward_vs_float32_twin);
    RUN(projections_rounded_in_dtype);
    RUN(threads_bitwise);
    RUN(gradients_accumulate_in_dtype);
    RUN(save_load_keeps_dtype);
    RUN(cached_decode_follows_full_forward);
    RUN(bad_dtypes);
    RUN(copy_converts_every_parameter);
    RUN(copy_keeps_dropout_stream_and_unbinds);
    RUN(copy_errors);
    return harness_report();
}
