/* test_mpi_module.c - the module over MPI (mha_mpi_module_forward / _backward), run under
 * mpirun with 1 to 4 ranks (tests/mpi.cmake).
 *
 * The oracle is the one-process module (itself checked against PyTorch in the golden and
 * Python tests): every rank builds two identical modules from one seed, runs mha_module_forward
 * and mha_module_backward on the whole sequence with one and its shard through the ring with
 * the other, twice (training with dropout: the dropout stream advances the same way; the
 * parameter gradients accumulate), and compares its rows of the output and of the input
 * gradients, and the whole parameter gradients (summed over the ranks), within 1e-5 relative:
 * self-attention causal with key padding (a batch entry whose keys are all padded: its output
 * is out_proj.bias) and cross-attention (kdim, vdim != E) with padding. Bad input: a backward
 * without a forward, modules that differ, an error on one rank: every rank returns the error;
 * an allocation failure on one rank during a backward: no rank writes anything. */
#include "mpi_test_util.h"
#include "core/internal.h" /* mha__fault_after: allocation failures */

static mha_ctx *ctx;

typedef struct {
    const char *name;
    int64_t B, E, H, kdim, vdim; /* kdim == vdim == 0: self-attention */
    int64_t lr, sr;              /* shard lengths */
    mha_causal causal;
    float dropout;
} mcase;

/* [B, R, X] view of a contiguous array. */
static mha_tensor t3(float *p, int64_t B, int64_t R, int64_t X) {
    int64_t s[3] = {B, R, X};
    return mha_tensor_make(p, 3, s);
}

static void run_case(const mcase *c) {
    const int self = c->kdim == 0;
    const int64_t B = c->B, E = c->E, L = c->lr * mt_P, S = self ? L : c->sr * mt_P;
    const int64_t kd = self ? E : c->kdim, vd = self ? E : c->vdim;
    mha_config cfg = mha_config_default(E, c->H);
    cfg.kdim = kd, cfg.vdim = vd, cfg.dropout = c->dropout, cfg.seed = 11;
    mha_module *ref = NULL, *mm = NULL;
    ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &ref));
    ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &mm));
    /* nonzero biases, the same in both modules */
    mt_seed(99);
    for (int w = 0; w < 2; w++) {
        const char *name = w ? "out_proj.bias" : "in_proj_bias";
        mha_tensor bv, bv2;
        ASSERT_OK(ctx, mha_module_param(ctx, ref, name, &bv, NULL));
        ASSERT_OK(ctx, mha_module_param(ctx, mm, name, &bv2, NULL));
        for (int64_t i = 0; i < mha_tensor_numel(&bv); i++)
            bv.data[i] = bv2.data[i] = 0.1f * mt_rand();
    }
    mt_seed((uint64_t)(L * 17 + S + E));
    const mha_mpi_layout lay = c->causal ? MHA_MPI_ZIGZAG : MHA_MPI_CONTIGUOUS;
    const mt_shard shq = mt_shard_of(lay, L), shk = mt_shard_of(lay, S);
    const int64_t Lr = shq.n, Sr = shk.n;
    uint8_t *pad = calloc((size_t)(B * S), 1);
    for (int64_t b = 0; b < B; b++)
        for (int64_t j = 0; j < S; j++) pad[b * S + j] = b == 1 || mt_rand() < -0.6f;
    uint8_t *rpad = mt_take(pad, 1, B, 1, S, 1, &shk);
    mha_mask mask = mha_mask_default(), rmask = mha_mask_default();
    mask.causal = rmask.causal = c->causal;
    mask.key_padding = pad, rmask.key_padding = rpad;
    mha_forward_opts fo = mha_forward_opts_default();
    fo.training = 1;
    float *y = malloc(sizeof(float) * (size_t)(B * L * E)),
          *ry = malloc(sizeof(float) * (size_t)(B * Lr * E));
    float *dx = malloc(sizeof(float) * (size_t)(B * L * E));
    float *dxr = malloc(sizeof(float) * (size_t)(B * Lr * E));
    float *dk = malloc(sizeof(float) * (size_t)(B * S * kd) + 4);
    float *dkr = malloc(sizeof(float) * (size_t)(B * Sr * kd) + 4);
    float *dv = malloc(sizeof(float) * (size_t)(B * S * vd) + 4);
    float *dvr = malloc(sizeof(float) * (size_t)(B * Sr * vd) + 4);
    float *x = NULL, *xk = NULL, *xv = NULL, *dout = NULL;
    for (int it = 0; it < 2; it++) { /* two steps: dropout advances, gradients accumulate */
        free(x), free(xk), free(xv), free(dout);
        x = mt_randn(B * L * E, 1), dout = mt_randn(B * L * E, 1);
        xk = mt_randn(B * S * kd, 1), xv = mt_randn(B * S * vd, 1);
        float *rx = mt_take(x, 4, B, 1, L, E, &shq), *rdo = mt_take(dout, 4, B, 1, L, E, &shq);
        float *rxk = mt_take(xk, 4, B, 1, S, kd, &shk), *rxv = mt_take(xv, 4, B, 1, S, vd, &shk);
        mha_tensor tx = t3(x, B, L, E), txk = t3(xk, B, S, kd), txv = t3(xv, B, S, vd);
        mha_tensor ty = t3(y, B, L, E), tdo = t3(dout, B, L, E), tdx = t3(dx, B, L, E);
        mha_tensor tdk = t3(dk, B, S, kd), tdv = t3(dv, B, S, vd);
        mha_tensor sx = t3(rx, B, Lr, E), sxk = t3(rxk, B, Sr, kd), sxv = t3(rxv, B, Sr, vd);
        mha_tensor sy = t3(ry, B, Lr, E), sdo = t3(rdo, B, Lr, E), sdx = t3(dxr, B, Lr, E);
        mha_tensor sdk = t3(dkr, B, Sr, kd), sdv = t3(dvr, B, Sr, vd);
        ASSERT_OK(ctx, mha_module_forward(ctx, ref, &fo, &tx, self ? NULL : &txk,
                                          self ? NULL : &txv, &mask, &ty, NULL));
        ASSERT_OK(
            ctx, mha_module_backward(ctx, ref, &tdo, &tdx, self ? NULL : &tdk, self ? NULL : &tdv));
        mha_mpi_stats fs, bs;
        ASSERT_OK(ctx, mha_mpi_module_forward(ctx, MPI_COMM_WORLD, mm, &fo, &sx, self ? NULL : &sxk,
                                              self ? NULL : &sxv, &rmask, &sy, &fs));
        /* the MPI forward is not the module's own saved forward */
        MT_CHECK(mha_module_backward(ctx, mm, &sdo, &sdx, NULL, NULL) == MHA_ERR_STATE, "%s",
                 mha_ctx_errmsg(ctx));
        ASSERT_OK(ctx, mha_mpi_module_backward(ctx, MPI_COMM_WORLD, mm, &sdo, &sdx,
                                               self ? NULL : &sdk, self ? NULL : &sdv, &bs));
        /* one backward per forward: the saved activations are released */
        mha_status st2 = mha_mpi_module_backward(ctx, MPI_COMM_WORLD, mm, &sdo, &sdx,
                                                 self ? NULL : &sdk, self ? NULL : &sdv, NULL);
        MT_STATUS(ctx, st2, MHA_ERR_STATE, "mha_mpi_module_backward: no saved forward");
        MT_CHECK(fs.steps == mt_P && bs.steps == mt_P && fs.work > 0, "steps %d %d", fs.steps,
                 bs.steps);
        float *wy = mt_take(y, 4, B, 1, L, E, &shq), *wdx = mt_take(dx, 4, B, 1, L, E, &shq);
        MT_NEAR("out", ry, wy, B * Lr * E);
        MT_NEAR("dquery", dxr, wdx, B * Lr * E);
        if (!self) {
            float *wdk = mt_take(dk, 4, B, 1, S, kd, &shk),
                  *wdv = mt_take(dv, 4, B, 1, S, vd, &shk);
            MT_NEAR("dkey", dkr, wdk, B * Sr * kd);
            MT_NEAR("dvalue", dvr, wdv, B * Sr * vd);
            free(wdk), free(wdv);
        }
        /* batch entry 1: every key padded, its output is out_proj.bias */
        mha_tensor bo;
        ASSERT_OK(ctx, mha_module_param(ctx, mm, "out_proj.bias", &bo, NULL));
        for (int64_t i = 0; i < Lr; i++)
            MT_CHECK(!memcmp(ry + (Lr + i) * E, bo.data, sizeof(float) * (size_t)E),
                     "row %lld of batch 1", (long long)i);
        free(rx), free(rdo), free(rxk), free(rxv), free(wy), free(wdx);
    }
    for (int i = 0; i < mha_module_param_count(ref); i++) {
        const char *name = mha_module_param_name(ref, i);
        mha_tensor g1, g2;
        ASSERT_OK(ctx, mha_module_param(ctx, ref, name, NULL, &g1));
        ASSERT_OK(ctx, mha_module_param(ctx, mm, name, NULL, &g2));
        MT_NEAR(name, g2.data, g1.data, mha_tensor_numel(&g1));
    }
    void *bufs[] = {pad, rpad, y, ry, dx, dxr, dk, dkr, dv, dvr, x, xk, xv, dout};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
    mha_module_free(ref);
    mha_module_free(mm);
}

static const mcase CASES[] = {
    {"self_causal", 3, 16, 4, 0, 0, 6, 6, MHA_CAUSAL_TOP_LEFT, 0.2f},
    {"self", 2, 8, 2, 0, 0, 5, 5, MHA_CAUSAL_NONE, 0},
    {"cross", 2, 16, 2, 12, 8, 3, 7, MHA_CAUSAL_NONE, 0.1f},
    {"long_causal", 2, 32, 2, 0, 0, 70, 70, MHA_CAUSAL_BOTTOM_RIGHT, 0.1f},
};

TEST(matches_one_process) { MT_RUN_CASES(CASES, run_case); }

TEST(bad_input_on_every_rank) {
    mha_config cfg = mha_config_default(mt_P > 1 && mt_rank == mt_P - 1 ? 8 : 16, 2);
    mha_module *m = NULL;
    ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &m));
    const int64_t E = cfg.embed_dim;
    float x[2 * 4 * 16] = {0}, y[2 * 4 * 16];
    mha_tensor tx = t3(x, 2, 4, E), ty = t3(y, 2, 4, E);
    /* no forward yet */
    mha_status st = mha_mpi_module_backward(ctx, MPI_COMM_WORLD, m, &ty, NULL, NULL, NULL, NULL);
    MT_STATUS(ctx, st, MHA_ERR_STATE, "mha_mpi_module_backward: no saved forward");
    /* modules that differ: the last rank's embed_dim */
    st = mha_mpi_module_forward(ctx, MPI_COMM_WORLD, m, NULL, &tx, NULL, NULL, NULL, &ty, NULL);
    if (mt_P > 1) {
        char want[128];
        snprintf(want, sizeof want,
                 "mha_mpi_module_forward: m's embed_dim: got 8 on rank %d, expected 16 as on "
                 "rank 0",
                 mt_P - 1);
        MT_STATUS(ctx, st, MHA_ERR_INVALID_ARG, want);
    } else {
        MT_CHECK(st == MHA_OK, "%s", mha_ctx_errmsg(ctx));
    }
    /* a NULL out on rank 0 */
    st = mha_mpi_module_forward(ctx, MPI_COMM_WORLD, m, NULL, &tx, NULL, NULL, NULL,
                                mt_rank == 0 ? NULL : &ty, NULL);
    MT_STATUS(ctx, st, MHA_ERR_INVALID_ARG,
              mt_rank == 0 ? "mha_mpi_module_forward: out: got NULL"
                           : "mha_mpi_module_forward: rank 0 failed: out: got NULL");
    /* a causal shard of odd length */
    mha_mask mk = mha_mask_default();
    mk.causal = MHA_CAUSAL_TOP_LEFT;
    mha_tensor t3x = t3(x, 2, 3, E), t3y = t3(y, 2, 3, E);
    st = mha_mpi_module_forward(ctx, MPI_COMM_WORLD, m, NULL, &t3x, NULL, NULL, &mk, &t3y, NULL);
    MT_STATUS(ctx, st, MHA_ERR_SHAPE, "query.shape[1]: got 3, expected an even shard length");
    mha_module_free(m);
}

/* An output in the module's memory on rank 0 (out in out_proj.weight, dquery in the gradient
 * of in_proj_weight) is refused on every rank, nothing written. */
TEST(output_in_the_module_refused) {
    mha_config cfg = mha_config_default(16, 2);
    mha_module *m = NULL;
    ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &m));
    mha_tensor w, g;
    ASSERT_OK(ctx, mha_module_param(ctx, m, "out_proj.weight", &w, NULL));
    ASSERT_OK(ctx, mha_module_param(ctx, m, "in_proj_weight", NULL, &g));
    static float x[2 * 4 * 16], y[2 * 4 * 16], dx[2 * 4 * 16], w0[16 * 16];
    for (int i = 0; i < 2 * 4 * 16; i++) x[i] = (float)(i % 7) / 7;
    memcpy(w0, w.data, sizeof w0);
    mha_tensor tx = t3(x, 2, 4, 16), ty = t3(y, 2, 4, 16), tw = t3(w.data, 2, 4, 16);
    mha_status st = mha_mpi_module_forward(ctx, MPI_COMM_WORLD, m, NULL, &tx, NULL, NULL, NULL,
                                           mt_rank == 0 ? &tw : &ty, NULL);
    MT_STATUS(ctx, st, MHA_ERR_INVALID_ARG,
              mt_rank == 0 ? "mha_mpi_module_forward: out overlaps the module's parameter "
                             "out_proj.weight ("
                           : "mha_mpi_module_forward: rank 0 failed: out overlaps the module's "
                             "parameter out_proj.weight");
    MT_CHECK(memcmp(w0, w.data, sizeof w0) == 0, "out_proj.weight written");
    st = mha_mpi_module_forward(ctx, MPI_COMM_WORLD, m, NULL, &tx, NULL, NULL, NULL, &ty, NULL);
    MT_CHECK(st == MHA_OK, "%s", mha_ctx_errmsg(ctx));
    mha_tensor tg = t3(g.data, 2, 4, 16), tdx = t3(dx, 2, 4, 16);
    st = mha_mpi_module_backward(ctx, MPI_COMM_WORLD, m, &ty, mt_rank == 0 ? &tg : &tdx, NULL, NULL,
                                 NULL);
    MT_STATUS(ctx, st, MHA_ERR_INVALID_ARG,
              mt_rank == 0 ? "mha_mpi_module_backward: dquery overlaps the module's gradient of "
                             "in_proj_weight ("
                           : "mha_mpi_module_backward: rank 0 failed: dquery overlaps");
    int zero = 1;
    for (int i = 0; i < 16 * 16 * 3; i++) zero = zero && g.data[i] == 0;
    MT_CHECK(zero, "in_proj_weight's gradient written");
    /* a gradient bound onto its own value (on rank 0): the backward would add it to the
     * weights; refused on every rank, the weights unchanged */
    mha_tensor v;
    ASSERT_OK(ctx, mha_module_param(ctx, m, "out_proj.weight", &v, NULL));
    if (mt_rank == 0)
        ASSERT_OK(ctx, mha_module_param_bind(ctx, m, "out_proj.weight", NULL, v.data));
    st = mha_mpi_module_backward(ctx, MPI_COMM_WORLD, m, &ty, &tdx, NULL, NULL, NULL);
    MT_STATUS(ctx, st, MHA_ERR_INVALID_ARG,
              mt_rank == 0 ? "mha_mpi_module_backward: the module's gradient of out_proj.weight "
                             "overlaps the module's parameter out_proj.weight ("
                           : "mha_mpi_module_backward: rank 0 failed: the module's gradient");
    MT_CHECK(memcmp(w0, v.data, sizeof w0) == 0, "out_proj.weight written");
    mha_module_free(m);
}

/* An allocation failure on the last rank at each allocation of a backward (a new module each
 * time, so that the products' workspace grows during the call: the last failures come after
 * the input gradients' products): every rank returns MHA_ERR_NOMEM, and no rank has written
 * dquery, dkey, dvalue or the module's gradients (a rank whose own products succeeded waits
 * for the others' before it writes). Self- and cross-attention. */
TEST(allocation_failure_writes_nothing) {
    const int64_t B = 2, Lr = 64, E = 16;
    float *x = calloc((size_t)(B * Lr * E), sizeof(float)), *xk = calloc((size_t)(B * Lr * 8), 4);
    float *xv = calloc((size_t)(B * Lr * 12), 4), *y = calloc((size_t)(B * Lr * E), 4);
    float *dx = calloc((size_t)(B * Lr * E), 4), *dk = calloc((size_t)(B * Lr * 8), 4);
    float *dv = calloc((size_t)(B * Lr * 12), 4);
    mt_seed(3);
    for (int64_t i = 0; i < B * Lr * E; i++) x[i] = mt_rand();
    for (int64_t i = 0; i < B * Lr * 8; i++) xk[i] = mt_rand();
    for (int64_t i = 0; i < B * Lr * 12; i++) xv[i] = mt_rand();
    mha_tensor tx = t3(x, B, Lr, E), tk = t3(xk, B, Lr, 8), tv = t3(xv, B, Lr, 12);
    mha_tensor ty = t3(y, B, Lr, E), tdx = t3(dx, B, Lr, E), tdk = t3(dk, B, Lr, 8);
    mha_tensor tdv = t3(dv, B, Lr, 12);
    for (int cross = 0; cross < 2; cross++) {
        int failures = 0;
        for (long n = 0; n < 40; n++) {
            mha_config cfg = mha_config_default(E, 2);
            if (cross) cfg.kdim = 8, cfg.vdim = 12;
            mha_module *m = NULL;
            ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &m));
            ASSERT_OK(ctx,
                      mha_mpi_module_forward(ctx, MPI_COMM_WORLD, m, NULL, &tx, cross ? &tk : NULL,
                                             cross ? &tv : NULL, NULL, &ty, NULL));
            for (int64_t i = 0; i < B * Lr * E; i++) dx[i] = 7;
            for (int64_t i = 0; i < B * Lr * 8; i++) dk[i] = 7;
            for (int64_t i = 0; i < B * Lr * 12; i++) dv[i] = 7;
            if (mt_rank == mt_P - 1) mha__fault_after(n);
            mha_status st = mha_mpi_module_backward(ctx, MPI_COMM_WORLD, m, &ty, &tdx,
                                                    cross ? &tdk : NULL, cross ? &tdv : NULL, NULL);
            mha__fault_after(-1);
            int nomem = st == MHA_ERR_NOMEM, all = 0, any = 0;
            MPI_Allreduce(&nomem, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
            MPI_Allreduce(&nomem, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
            MT_CHECK(all == any, "fault at allocation %ld: NOMEM on some ranks only (%s)", n,
                     mha_ctx_errmsg(ctx));
            if (nomem) {
                int64_t written = 0;
                for (int64_t i = 0; i < B * Lr * E; i++) written += dx[i] != 7;
                for (int64_t i = 0; cross && i < B * Lr * 8; i++) written += dk[i] != 7;
                for (int64_t i = 0; cross && i < B * Lr * 12; i++) written += dv[i] != 7;
                mha_tensor g;
                ASSERT_OK(ctx, mha_module_param(ctx, m, "out_proj.weight", NULL, &g));
                for (int64_t i = 0; i < E * E; i++) written += g.data[i] != 0;
                MT_CHECK(written == 0, "%s, fault at allocation %ld: %lld elements written",
                         cross ? "cross" : "self", n, (long long)written);
            }
            mha_module_free(m);
            failures += any;
            if (!any) break;
        }
        MT_CHECK(failures > 5, "only %d allocations failed", failures);
    }
    void *bufs[] = {x, xk, xv, y, dx, dk, dv};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
}

int main(int argc, char **argv) {
    mt_init(&argc, &argv);
    if (mha_ctx_create(&ctx) != MHA_OK) return 1;
    RUN(matches_one_process);
    RUN(bad_input_on_every_rank);
    RUN(output_in_the_module_refused);
    RUN(allocation_failure_writes_nothing);
    mha_ctx_free(ctx);
    return mt_finish();
}
