/* test_mpi_attn.c - the attention core over MPI (mha_mpi_attn_forward / _backward), run under
 * mpirun with 1 to 4 ranks (tests/mpi.cmake).
 *
 * The oracle is the one-process core (itself checked against a float64 reference in
 * test_attn.c): every rank generates the whole inputs from a seed, runs mha_attn_forward and
 * mha_attn_backward on the whole sequence, and compares its shard of out, lse, dq, dk and dv
 * with what the ring gives it (1e-5 relative), for causal (both alignments, zigzag) and
 * non-causal (contiguous) attention, key padding with a batch entry whose keys are all padded
 * (out 0, lse -inf, gradients 0: never NaN), grouped-query heads, dropout (the mask drawn at
 * global positions; 1: every weight dropped), softcap, cross-attention L != S, chunks not a
 * multiple of the tiles, and strided views. The causal work is balanced exactly (zigzag). Bad
 * input: ranks that disagree on shapes or options, lengths that do not split, an error on one
 * rank only (a NULL tensor, an allocation failure before or during the ring), unsupported
 * masks, a NULL or an intercommunicator: every rank returns an error naming the argument and
 * the ranks, and the test ends (no hang: ctest's TIMEOUT). */
#include "mpi_test_util.h"
#include "core/internal.h" /* mha__fault_after: allocation failures */

static mha_ctx *ctx;

typedef struct {
    const char *name;
    int64_t B, H, Hkv, D, Dv;
    int64_t lr, sr; /* shard lengths: L = lr P, S = sr P */
    mha_causal causal;
    int pad;       /* key padding: random, and batch entry 1 all padded */
    float drop;    /* dropout_p (seed 7, offset 3) */
    float softcap; /* p->softcap */
    int strided;   /* the ring's tensors as [B, L, H, X] memory */
} acase;

/* A [B, X, R, Y] view of a contiguous array, or (strided) of [B, R, X, Y] memory holding the
 * same values: mem must have room for B X R Y floats. */
static mha_tensor view4(float *mem, const float *vals, int64_t B, int64_t X, int64_t R, int64_t Y,
                        int strided) {
    int64_t s[4] = {B, X, R, Y};
    if (!strided) {
        if (vals) memcpy(mem, vals, sizeof(float) * (size_t)(B * X * R * Y));
        return mha_tensor_make(mem, 4, s);
    }
    int64_t st[4] = {R * X * Y, Y, X * Y, 1};
    mha_tensor t = mha_tensor_strided(mem, 4, s, st);
    if (vals)
        for (int64_t b = 0; b < B; b++)
            for (int64_t x = 0; x < X; x++)
                for (int64_t r = 0; r < R; r++)
                    memcpy(t.data + b * st[0] + x * st[1] + r * st[2],
                           vals + ((b * X + x) * R + r) * Y, sizeof(float) * (size_t)Y);
    return t;
}

/* The values of a view made by view4, contiguous [B, X, R, Y] (malloc'd). */
static float *flat(const mha_tensor *t) {
    const int64_t B = t->shape[0], X = t->shape[1], R = t->shape[2], Y = t->shape[3];
    float *f = malloc(sizeof(float) * (size_t)(B * X * R * Y) + 1);
    for (int64_t b = 0; b < B; b++)
        for (int64_t x = 0; x < X; x++)
            for (int64_t r = 0; r < R; r++)
                memcpy(f + ((b * X + x) * R + r) * Y,
                       t->data + b * t->stride[0] + x * t->stride[1] + r * t->stride[2],
                       sizeof(float) * (size_t)Y);
    return f;
}

static void run_case(const acase *c) {
    const int64_t B = c->B, H = c->H, Hkv = c->Hkv, D = c->D, Dv = c->Dv;
    const int64_t L = c->lr * mt_P, S = c->sr * mt_P;
    mt_seed((uint64_t)(L * 131 + S * 7 + D + c->causal));
    float *q = mt_randn(B * H * L * D, 1), *k = mt_randn(B * Hkv * S * D, 1);
    float *v = mt_randn(B * Hkv * S * Dv, 1), *dout = mt_randn(B * H * L * Dv, 1);
    uint8_t *pad = calloc((size_t)(B * S), 1);
    for (int64_t b = 0; c->pad && b < B; b++)
        for (int64_t j = 0; j < S; j++) pad[b * S + j] = b == 1 || mt_rand() < -0.5f;
    mha_attn_params p = mha_attn_params_default();
    p.dropout_p = c->drop, p.seed = 7, p.offset = 3, p.softcap = c->softcap;
    mha_mask mask = mha_mask_default();
    mask.causal = c->causal;
    mask.key_padding = c->pad ? pad : NULL;

    /* the one-process reference on the whole sequence */
    float *out = malloc(sizeof(float) * (size_t)(B * H * L * Dv)),
          *lse = malloc(sizeof(float) * (size_t)(B * H * L));
    float *dq = malloc(sizeof(float) * (size_t)(B * H * L * D));
    float *dk = malloc(sizeof(float) * (size_t)(B * Hkv * S * D));
    float *dv = malloc(sizeof(float) * (size_t)(B * Hkv * S * Dv));
    int64_t sq[4] = {B, H, L, D}, sk[4] = {B, Hkv, S, D}, sv[4] = {B, Hkv, S, Dv};
    int64_t so[4] = {B, H, L, Dv}, sl[3] = {B, H, L};
    mha_tensor tq = mha_tensor_make(q, 4, sq), tk = mha_tensor_make(k, 4, sk);
    mha_tensor tv = mha_tensor_make(v, 4, sv), to = mha_tensor_make(out, 4, so);
    mha_tensor tl = mha_tensor_make(lse, 3, sl), tdo = mha_tensor_make(dout, 4, so);
    mha_tensor tdq = mha_tensor_make(dq, 4, sq), tdk = mha_tensor_make(dk, 4, sk);
    mha_tensor tdv = mha_tensor_make(dv, 4, sv);
    ASSERT_OK(ctx, mha_attn_forward(ctx, &p, &tq, &tk, &tv, &mask, &to, &tl, NULL));
    ASSERT_OK(ctx,
              mha_attn_backward(ctx, &p, &tq, &tk, &tv, &mask, &to, &tl, &tdo, &tdq, &tdk, &tdv));

    /* this rank's shard, through the ring */
    const mha_mpi_layout lay = mha_mpi_layout_for(&mask);
    const mt_shard shq = mt_shard_of(lay, L), shk = mt_shard_of(lay, S);
    float *rq = mt_take(q, 4, B, H, L, D, &shq), *rk = mt_take(k, 4, B, Hkv, S, D, &shk);
    float *rv = mt_take(v, 4, B, Hkv, S, Dv, &shk), *rdo = mt_take(dout, 4, B, H, L, Dv, &shq);
    uint8_t *rpad = mt_take(pad, 1, B, 1, S, 1, &shk);
    const int64_t Lr = shq.n, Sr = shk.n, z = c->strided;
    float *mq = malloc(sizeof(float) * (size_t)(B * H * Lr * D));
    float *mk = malloc(sizeof(float) * (size_t)(B * Hkv * Sr * D));
    float *mv = malloc(sizeof(float) * (size_t)(B * Hkv * Sr * Dv));
    float *mo = malloc(sizeof(float) * (size_t)(B * H * Lr * Dv));
    float *mdo = malloc(sizeof(float) * (size_t)(B * H * Lr * Dv));
    float *mdq = malloc(sizeof(float) * (size_t)(B * H * Lr * D));
    float *mdk = malloc(sizeof(float) * (size_t)(B * Hkv * Sr * D));
    float *mdv = malloc(sizeof(float) * (size_t)(B * Hkv * Sr * Dv));
    float *ml = malloc(sizeof(float) * (size_t)(B * H * Lr));
    mha_tensor xq = view4(mq, rq, B, H, Lr, D, z), xk = view4(mk, rk, B, Hkv, Sr, D, z);
    mha_tensor xv = view4(mv, rv, B, Hkv, Sr, Dv, z), xo = view4(mo, NULL, B, H, Lr, Dv, z);
    mha_tensor xdo = view4(mdo, rdo, B, H, Lr, Dv, z), xdq = view4(mdq, NULL, B, H, Lr, D, z);
    mha_tensor xdk = view4(mdk, NULL, B, Hkv, Sr, D, z);
    mha_tensor xdv = view4(mdv, NULL, B, Hkv, Sr, Dv, z);
    int64_t slr[3] = {B, H, Lr};
    mha_tensor xl = mha_tensor_make(ml, 3, slr);
    mha_mask rmask = mask;
    rmask.key_padding = c->pad ? rpad : NULL;
    mha_mpi_stats fs, bs;
    ASSERT_OK(ctx,
              mha_mpi_attn_forward(ctx, MPI_COMM_WORLD, &p, &xq, &xk, &xv, &rmask, &xo, &xl, &fs));
    ASSERT_OK(ctx, mha_mpi_attn_backward(ctx, MPI_COMM_WORLD, &p, &xq, &xk, &xv, &rmask, &xo, &xl,
                                         &xdo, &xdq, &xdk, &xdv, &bs));

    /* every collective call made: compare */
    float *wo = mt_take(out, 4, B, H, L, Dv, &shq), *wl = mt_take(lse, 4, B, H, L, 1, &shq);
    float *wdq = mt_take(dq, 4, B, H, L, D, &shq), *wdk = mt_take(dk, 4, B, Hkv, S, D, &shk);
    float *wdv = mt_take(dv, 4, B, Hkv, S, Dv, &shk);
    float *go = flat(&xo), *gdq = flat(&xdq), *gdk = flat(&xdk), *gdv = flat(&xdv);
    MT_NEAR("out", go, wo, B * H * Lr * Dv);
    MT_NEAR("lse", ml, wl, B * H * Lr);
    MT_NEAR("dq", gdq, wdq, B * H * Lr * D);
    MT_NEAR("dk", gdk, wdk, B * Hkv * Sr * D);
    MT_NEAR("dv", gdv, wdv, B * Hkv * Sr * Dv);
    int64_t nan = 0;
    for (int64_t i = 0; i < B * H * Lr * Dv; i++) nan += isnan(go[i]);
    MT_CHECK(nan == 0, "%lld NaN in out", (long long)nan);
    if (c->pad && B > 1) { /* batch entry 1: every key padded: out 0, lse -inf, dq 0 */
        int64_t bad = 0;
        for (int64_t i = 0; i < H * Lr; i++) bad += ml[H * Lr + i] != -INFINITY;
        for (int64_t i = 0; i < H * Lr * Dv; i++) bad += go[H * Lr * Dv + i] != 0;
        for (int64_t i = 0; i < H * Lr * D; i++) bad += gdq[H * Lr * D + i] != 0;
        MT_CHECK(bad == 0, "%lld elements of batch entry 1 not 0 (-inf for lse)", (long long)bad);
    }
    MT_CHECK(fs.steps == mt_P && bs.steps == mt_P, "steps %d, %d", fs.steps, bs.steps);
    MT_CHECK(fs.total_s > 0 && fs.total_s >= fs.compute_s + fs.comm_wait_s && bs.total_s > 0,
             "seconds: forward total %g, compute %g, wait %g; backward total %g", fs.total_s,
             fs.compute_s, fs.comm_wait_s, bs.total_s);
    MT_CHECK(fs.work > 0 && bs.work == 2 * fs.work, "work %g, %g", fs.work, bs.work);
    MT_CHECK(fs.bytes_sent > 0 || mt_P == 1, "bytes %lld", (long long)fs.bytes_sent);
    /* zigzag: every rank the same work (causal balance max / mean = 1) */
    double wmax = 0, wsum = 0;
    MPI_Allreduce(&fs.work, &wmax, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    MPI_Allreduce(&fs.work, &wsum, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    if (c->causal) MT_CHECK(wmax == wsum / mt_P, "work max %g, mean %g", wmax, wsum / mt_P);
    void *bufs[] = {q,   k,  v,   dout, pad, out, lse, dq,  dk,  dv,  rq,
                    rk,  rv, rdo, mq,   mk,  mv,  mo,  mdo, mdq, mdk, ml,
                    mdv, wo, wl,  wdq,  wdk, wdv, go,  gdq, gdk, gdv, rpad};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
}

static const acase CASES[] = {
    {"plain", 2, 4, 4, 8, 8, 6, 6, MHA_CAUSAL_NONE, 0, 0, 0, 0},
    {"causal", 2, 4, 4, 8, 8, 10, 10, MHA_CAUSAL_TOP_LEFT, 0, 0, 0, 0},
    {"causal_pad_gqa", 3, 4, 2, 16, 8, 6, 6, MHA_CAUSAL_TOP_LEFT, 1, 0, 0, 0},
    {"causal_br_dropout", 2, 4, 2, 8, 12, 10, 10, MHA_CAUSAL_BOTTOM_RIGHT, 1, 0.3f, 0, 0},
    {"pad_dropout_mqa", 2, 4, 1, 8, 8, 7, 7, MHA_CAUSAL_NONE, 1, 0.25f, 0, 0},
    {"cross", 2, 2, 2, 8, 4, 3, 9, MHA_CAUSAL_NONE, 1, 0.2f, 0, 0},
    /* dropout 1: every weight dropped (out and gradients 0, lse the undropped softmax's) */
    {"causal_pad_dropout_all", 2, 4, 2, 8, 8, 6, 6, MHA_CAUSAL_TOP_LEFT, 1, 1.0f, 0, 0},
    {"strided_softcap", 2, 4, 2, 8, 8, 8, 8, MHA_CAUSAL_TOP_LEFT, 1, 0.1f, 5.0f, 1},
    /* chunks across the kernels' tiles (forward 96 x 256, backward 64 x 128) */
    {"long_causal", 1, 2, 1, 64, 64, 260, 260, MHA_CAUSAL_TOP_LEFT, 1, 0.1f, 0, 0},
    {"long_plain", 1, 2, 2, 32, 32, 150, 150, MHA_CAUSAL_NONE, 0, 0, 0, 0},
};

TEST(matches_one_process) { MT_RUN_CASES(CASES, run_case); }

/* ---------------------------------------------------------------------------------------------
 * Bad input: every rank returns an error
 * ------------------------------------------------------------------------------------------- */

/* A small non-causal problem on this rank: q [1, 2, lr, 4], k, v [1, 2, sr, 4]. */
typedef struct {
    float q[1 * 2 * 16 * 4], k[1 * 2 * 16 * 4], v[1 * 2 * 16 * 4], o[1 * 2 * 16 * 4];
    float l[2 * 16], dq[2 * 16 * 4], dk[2 * 16 * 4], dv[2 * 16 * 4];
    mha_tensor tq, tk, tv, to, tl, tdq, tdk, tdv;
} small;

static void small_make(small *s, int64_t lr, int64_t sr) {
    int64_t sq[4] = {1, 2, lr, 4}, sk[4] = {1, 2, sr, 4}, sl[3] = {1, 2, lr};
    for (int i = 0; i < 128; i++) s->q[i] = s->k[i] = s->v[i] = 0.01f * (float)i;
    s->tq = mha_tensor_make(s->q, 4, sq), s->tk = mha_tensor_make(s->k, 4, sk);
    s->tv = mha_tensor_make(s->v, 4, sk), s->to = mha_tensor_make(s->o, 4, sq);
    s->tl = mha_tensor_make(s->l, 3, sl), s->tdq = mha_tensor_make(s->dq, 4, sq);
    s->tdk = mha_tensor_make(s->dk, 4, sk), s->tdv = mha_tensor_make(s->dv, 4, sk);
}

static int is_last(void) { return mt_rank == mt_P - 1; }

TEST(ranks_disagree_on_shapes) {
    small s;
    const int last = is_last();
    small_make(&s, 4, last && mt_P > 1 ? 6 : 4); /* the last rank's k, v: 6 keys */
    mha_status st = mha_mpi_attn_forward(ctx, MPI_COMM_WORLD, NULL, &s.tq, &s.tk, &s.tv, NULL,
                                         &s.to, &s.tl, NULL);
    if (mt_P == 1) {
        MT_CHECK(st == MHA_OK, "%s", mha_ctx_errmsg(ctx));
        return;
    }
    char want[128];
    snprintf(want, sizeof want,
             "mha_mpi_attn_forward: k.shape[2]: got 6 on rank %d, expected 4 as on rank 0",
             mt_P - 1);
    MT_STATUS(ctx, st, MHA_ERR_SHAPE, want);
}

TEST(ranks_disagree_on_options) {
    small s;
    small_make(&s, 4, 4);
    mha_attn_params p = mha_attn_params_default();
    p.dropout_p = 0.1f, p.seed = mt_P > 1 && is_last() ? 8 : 7;
    mha_status st = mha_mpi_attn_forward(ctx, MPI_COMM_WORLD, &p, &s.tq, &s.tk, &s.tv, NULL, &s.to,
                                         &s.tl, NULL);
    char want[128];
    snprintf(want, sizeof want,
             "mha_mpi_attn_forward: p->seed: got 8 on rank %d, expected 7 as on rank 0%s", mt_P - 1,
             mt_P > 2 ? " (" : ""); /* 3 ranks or more: "(P-1 of P ranks)" follows */
    if (mt_P > 1) MT_STATUS(ctx, st, MHA_ERR_INVALID_ARG, want);
    /* a causal mask on rank 0 only: with 3 ranks or more the others are the majority, rank 0
     * the one named; with 2, a tie, rank 0's is the expected value */
    mha_mask m = mha_mask_default();
    m.causal = mt_rank == 0 ? MHA_CAUSAL_TOP_LEFT : MHA_CAUSAL_NONE;
    st = mha_mpi_attn_forward(ctx, MPI_COMM_WORLD, NULL, &s.tq, &s.tk, &s.tv, &m, &s.to, &s.tl,
                              NULL);
    if (mt_P == 2)
        MT_STATUS(ctx, st, MHA_ERR_INVALID_ARG,
                  "mask->causal: got none (0) on rank 1, expected top-left (1) as on rank 0");
    if (mt_P > 2) {
        snprintf(want, sizeof want,
                 "mask->causal: got top-left (1) on rank 0, expected none (0) as on rank 1 (%d "
                 "of %d ranks)",
                 mt_P - 1, mt_P);
        MT_STATUS(ctx, st, MHA_ERR_INVALID_ARG, want);
    }
    /* lse on rank 0 only */
    st = mha_mpi_attn_forward(ctx, MPI_COMM_WORLD, NULL, &s.tq, &s.tk, &s.tv, NULL, &s.to,
                              mt_rank == 0 ? &s.tl : NULL, NULL);
    if (mt_P == 2)
        MT_STATUS(ctx, st, MHA_ERR_INVALID_ARG,
                  "lse: got NULL on rank 1, expected given as on rank 0");
    if (mt_P > 2) {
        snprintf(want, sizeof want,
                 "lse: got given on rank 0, expected NULL as on rank 1 (%d of %d ranks)", mt_P - 1,
                 mt_P);
        MT_STATUS(ctx, st, MHA_ERR_INVALID_ARG, want);
    }
}

/* rank 0 calls the forward, the others the backward */
TEST(ranks_make_different_calls) {
    small s;
    small_make(&s, 4, 4);
    mha_status st =
        mt_rank == 0 ? mha_mpi_attn_forward(ctx, MPI_COMM_WORLD, NULL, &s.tq, &s.tk, &s.tv, NULL,
                                            &s.to, &s.tl, NULL)
                     : mha_mpi_attn_backward(ctx, MPI_COMM_WORLD, NULL, &s.tq, &s.tk, &s.tv, NULL,
                                             &s.to, &s.tl, &s.to, &s.tdq, &s.tdk, &s.tdv, NULL);
    if (mt_P == 1) {
        MT_CHECK(st == MHA_OK, "%s", mha_ctx_errmsg(ctx));
        return;
    }
    MT_STATUS(ctx, st, MHA_ERR_INVALID_ARG,
              "rank 1 called mha_mpi_attn_backward, expected mha_mpi_attn_forward as rank 0");
}

TEST(lengths_that_do_not_split) {
    int64_t start[2], len[2];
    MT_STATUS(ctx, mha_mpi_shard(ctx, MHA_MPI_ZIGZAG, 10, 0, 4, start, len), MHA_ERR_SHAPE,
              "mha_mpi_shard: n: got 10, expected a multiple of 8 (2 x 4 ranks, zigzag)");
    MT_STATUS(ctx, mha_mpi_shard(ctx, MHA_MPI_CONTIGUOUS, 10, 0, 4, start, len), MHA_ERR_SHAPE,
              "mha_mpi_shard: n: got 10, expected a multiple of 4 (4 ranks, contiguous)");
    MT_CHECK(mha_mpi_shard(ctx, MHA_MPI_ZIGZAG, 16, 1, 4, start, len) == MHA_OK && start[0] == 2 &&
                 len[0] == 2 && start[1] == 12 && len[1] == 2,
             "zigzag rank 1 of 4: [%lld, +%lld) [%lld, +%lld)", (long long)start[0],
             (long long)len[0], (long long)start[1], (long long)len[1]);
    MT_STATUS(ctx, mha_mpi_shard(ctx, MHA_MPI_ZIGZAG, 16, 4, 4, start, len), MHA_ERR_INVALID_ARG,
              "rank: got 4, expected a value in [0, 3]");
    /* causal: each rank's shard is two chunks of equal length */
    small s;
    small_make(&s, 5, 5);
    mha_mask m = mha_mask_default();
    m.causal = MHA_CAUSAL_TOP_LEFT;
    mha_status st = mha_mpi_attn_forward(ctx, MPI_COMM_WORLD, NULL, &s.tq, &s.tk, &s.tv, &m, &s.to,
                                         &s.tl, NULL);
    MT_STATUS(ctx, st, MHA_ERR_SHAPE, "q.shape[2]: got 5, expected an even shard length");
    /* causal across ranks needs L == S */
    small_make(&s, 4, 6);
    st = mha_mpi_attn_forward(ctx, MPI_COMM_WORLD, NULL, &s.tq, &s.tk, &s.tv, &m, &s.to, &s.tl,
                              NULL);
    MT_STATUS(ctx, st, MHA_ERR_SHAPE, "k.shape[2]: got 6, expected 4 (causal across ranks");
}

TEST(error_on_one_rank) {
    small s;
    small_make(&s, 4, 4);
    const int bad = mt_P - 1;
    char want[160];
    /* a NULL q on the last rank */
    mha_status st = mha_mpi_attn_forward(ctx, MPI_COMM_WORLD, NULL, mt_rank == bad ? NULL : &s.tq,
                                         &s.tk, &s.tv, NULL, &s.to, &s.tl, NULL);
    if (mt_rank == bad)
        MT_STATUS(ctx, st, MHA_ERR_INVALID_ARG,
                  "mha_mpi_attn_forward: q: got NULL, expected a tensor");
    else {
        snprintf(want, sizeof want,
                 "mha_mpi_attn_forward: rank %d failed: q: got NULL, expected a tensor", bad);
        MT_STATUS(ctx, st, MHA_ERR_INVALID_ARG, want);
    }
    /* the backward with a NULL dk on rank 0 */
    st = mha_mpi_attn_backward(ctx, MPI_COMM_WORLD, NULL, &s.tq, &s.tk, &s.tv, NULL, &s.to, &s.tl,
                               &s.to, &s.tdq, mt_rank == 0 ? NULL : &s.tdk, &s.tdv, NULL);
    MT_STATUS(ctx, st, MHA_ERR_INVALID_ARG, mt_rank == 0 ? "dk: got NULL" : "rank 0 failed: dk");
    /* an output overlapping an input on the last rank */
    st = mha_mpi_attn_forward(ctx, MPI_COMM_WORLD, NULL, &s.tq, &s.tk, &s.tv, NULL,
                              mt_rank == bad ? &s.tq : &s.to, &s.tl, NULL);
    snprintf(want, sizeof want, "%sout overlaps q", mt_rank == bad ? "" : "failed: ");
    MT_STATUS(ctx, st, MHA_ERR_INVALID_ARG, want);
    /* an unsupported mask on the last rank (the others pass none) */
    mha_mask m = mha_mask_default();
    m.window = 1, m.window_left = 2, m.window_right = 0;
    st = mha_mpi_attn_forward(ctx, MPI_COMM_WORLD, NULL, &s.tq, &s.tk, &s.tv,
                              mt_rank == bad ? &m : NULL, &s.to, &s.tl, NULL);
    MT_STATUS(ctx, st, MHA_ERR_UNSUPPORTED, "mask->window: got a mask, expected none");
    /* bfloat16 on every rank */
    mha_tensor b16 = s.tq;
    b16.dtype = MHA_DTYPE_BF16;
    st = mha_mpi_attn_forward(ctx, MPI_COMM_WORLD, NULL, &b16, &s.tk, &s.tv, NULL, &s.to, &s.tl,
                              NULL);
    MT_CHECK(st == MHA_ERR_UNSUPPORTED, "%s", mha_ctx_errmsg(ctx));
}

/* A communicator the ring cannot run on, refused on every rank before any message:
 * MPI_COMM_NULL, and an intercommunicator (rank 0 against the others), whose ranks and
 * collectives are those of the remote group (its ring paired the groups' shards: wrong results
 * with groups of one size, MPI errors with groups of two sizes). */
TEST(communicator_refused) {
    small s;
    small_make(&s, 4, 4);
    mha_status st = mha_mpi_attn_forward(ctx, MPI_COMM_NULL, NULL, &s.tq, &s.tk, &s.tv, NULL, &s.to,
                                         &s.tl, NULL);
    MT_STATUS(ctx, st, MHA_ERR_INVALID_ARG,
              "mha_mpi_attn_forward: comm: got MPI_COMM_NULL, expected a communicator");
    if (mt_P < 2) return;
    MPI_Comm group, inter;
    const int first = mt_rank == 0;
    MPI_Comm_split(MPI_COMM_WORLD, first, mt_rank, &group);
    MPI_Intercomm_create(group, 0, MPI_COMM_WORLD, first ? 1 : 0, 5, &inter);
    st = mha_mpi_attn_forward(ctx, inter, NULL, &s.tq, &s.tk, &s.tv, NULL, &s.to, &s.tl, NULL);
    MT_STATUS(ctx, st, MHA_ERR_INVALID_ARG,
              "mha_mpi_attn_forward: comm: got an intercommunicator, expected an "
              "intracommunicator");
    st = mha_mpi_attn_backward(ctx, inter, NULL, &s.tq, &s.tk, &s.tv, NULL, &s.to, &s.tl, &s.to,
                               &s.tdq, &s.tdk, &s.tdv, NULL);
    MT_STATUS(ctx, st, MHA_ERR_INVALID_ARG, "comm: got an intercommunicator");
    MPI_Comm_free(&inter);
    MPI_Comm_free(&group);
}

/* Allocation failures on one rank: before the ring (agreed at once) and in the core during the
 * ring (the rank keeps exchanging blocks; the error is agreed after the ring). */
TEST(allocation_failure_on_one_rank) {
    small s;
    small_make(&s, 4, 4);
    const int bad = mt_P - 1;
    for (long n = 0; n < 6; n++) {
        if (mt_rank == bad) mha__fault_after(n);
        mha_status st = mha_mpi_attn_forward(ctx, MPI_COMM_WORLD, NULL, &s.tq, &s.tk, &s.tv, NULL,
                                             &s.to, &s.tl, NULL);
        mha__fault_after(-1);
        int nomem = st == MHA_ERR_NOMEM, all = 0, any = 0;
        MPI_Allreduce(&nomem, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
        MPI_Allreduce(&nomem, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
        MT_CHECK(all == any, "fault at allocation %ld of rank %d: NOMEM on some ranks only (%s)", n,
                 bad, mha_ctx_errmsg(ctx));
        if (nomem && mt_rank != bad) {
            char want[64];
            snprintf(want, sizeof want, "rank %d failed: ", bad);
            MT_STATUS(ctx, st, MHA_ERR_NOMEM, want);
        }
        if (!any) MT_CHECK(st == MHA_OK, "fault at %ld: %s", n, mha_ctx_errmsg(ctx));
    }
    /* the same in the backward */
    for (long n = 0; n < 6; n++) {
        if (mt_rank == bad) mha__fault_after(n);
        mha_status st = mha_mpi_attn_backward(ctx, MPI_COMM_WORLD, NULL, &s.tq, &s.tk, &s.tv, NULL,
                                              &s.to, &s.tl, &s.to, &s.tdq, &s.tdk, &s.tdv, NULL);
        mha__fault_after(-1);
        int nomem = st == MHA_ERR_NOMEM, all = 0, any = 0;
        MPI_Allreduce(&nomem, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
        MPI_Allreduce(&nomem, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
        MT_CHECK(all == any, "backward: fault at %ld: NOMEM on some ranks only", n);
    }
}

int main(int argc, char **argv) {
    mt_init(&argc, &argv);
    if (mha_ctx_create(&ctx) != MHA_OK) return 1;
    RUN(matches_one_process);
    RUN(ranks_disagree_on_shapes);
    RUN(ranks_disagree_on_options);
    RUN(ranks_make_different_calls);
    RUN(lengths_that_do_not_split);
    RUN(error_on_one_rank);
    RUN(communicator_refused);
    RUN(allocation_failure_on_one_rank);
    mha_ctx_free(ctx);
    return mt_finish();
}
