/* test_dispatch.c - the kernel tables as the drivers see them: every table complete (the fused
 * forward is the forward's only path, so no entry may be missing), the best-ISA choice, and
 * mha_ctx_describe (`mha info`) reporting the kernels and tile sizes that actually run. */
#include "harness.h"
#include "core/internal.h"
#include "kernels/kernels.h"

#include <ctype.h>

/* Every built and runnable table has every entry the drivers call, and tile sizes they can
 * use: a missing entry would be a NULL call, not a fallback. */
TEST(tables_complete) {
    int n = 0;
    for (int isa = MHA_ISA_GENERIC; isa <= MHA_ISA_AVX512; isa++) {
        const mha_kernels *k = mha__kernels_for((mha_isa)isa);
        ASSERT_EQ(k != NULL, mha_isa_supported((mha_isa)isa));
        if (!k) continue;
        n++;
        ASSERT_STR_CONTAINS(k->name, mha_isa_name((mha_isa)isa));
        ASSERT_TRUE(k->gemm_ukr && k->gemm_pack && k->gemm_ukr_name && k->gemm_pack_name);
        ASSERT_TRUE(k->gemm_mr > 0 && k->gemm_nr > 0 && k->gemm_kc > 0);
        ASSERT_TRUE(k->gemm_mc % k->gemm_mr == 0 && k->gemm_nc % k->gemm_nr == 0);
        ASSERT_TRUE(k->attn_scores && k->attn_probs && k->attn_pv && k->attn_ptv);
        ASSERT_TRUE(k->attn_dsoftmax && k->attn_dropout && k->attn_dropout_apply);
        ASSERT_TRUE(k->attn_kpack && k->attn_fwd && k->attn_fwd_drop);
        ASSERT_TRUE(k->attn_br > 0 && k->attn_bc > 0 && k->attn_fwd_br > 0 && k->attn_fwd_bc > 0);
    }
    ASSERT_TRUE(n >= 1);
}

/* auto picks the best table that exists: avx512, then avx2, then generic. */
TEST(best_isa) {
    mha_isa want = mha_isa_supported(MHA_ISA_AVX512) ? MHA_ISA_AVX512
                   : mha_isa_supported(MHA_ISA_AVX2) ? MHA_ISA_AVX2
                                                     : MHA_ISA_GENERIC;
    ASSERT_EQ(mha__best_isa(), want);
    ASSERT_TRUE(mha__kernels_for(want) != NULL);
    ASSERT_TRUE(mha__kernels_for(MHA_ISA_AUTO) == NULL);
    for (int isa = MHA_ISA_AVX2; isa <= MHA_ISA_AVX512; isa++)
        if (mha_isa_supported((mha_isa)isa)) ASSERT_TRUE(mha__cpu_supports((mha_isa)isa));
}

/* Spies: a copy of a table whose entries record the largest tile they were handed and then
 * call the real kernel, so a test sees what the drivers run. */
static const mha_kernels *real;
typedef struct {
    long calls;
    int64_t r, c; /* the largest rows x columns seen */
} seen;
static seen s_fwd, s_drop, s_scores, s_skp, s_ukr;
static void note(seen *s, int64_t r, int64_t c) {
    s->calls++;
    if (r > s->r) s->r = r;
    if (c > s->c) s->c = c;
}
static void spy_fwd(int64_t br, int64_t bc, int64_t n, int64_t nv, float scale, const float *A,
                    int64_t lda, const float *Kp, const float *V, int64_t ldv,
                    const mha__attn_tile_mask *mk, float *m, float *l, float *O, int64_t ldo,
                    float *P, int64_t ldp) {
    note(&s_fwd, br, bc);
    real->attn_fwd(br, bc, n, nv, scale, A, lda, Kp, V, ldv, mk, m, l, O, ldo, P, ldp);
}
static void spy_drop(int64_t br, int64_t bc, int64_t n, int64_t nv, float scale, const float *A,
                     int64_t lda, const float *Kp, const float *V, int64_t ldv,
                     const mha__attn_tile_mask *mk, float *m, float *l, float *O, int64_t ldo,
                     float *P, int64_t ldp, const uint8_t *keep, int64_t ldk) {
    note(&s_drop, br, bc);
    real->attn_fwd_drop(br, bc, n, nv, scale, A, lda, Kp, V, ldv, mk, m, l, O, ldo, P, ldp, keep,
                        ldk);
}
static void spy_scores(int64_t br, int64_t bc, int64_t n, float scale, const float *A, int64_t lda,
                       const float *B, int64_t ldb, float *S, int64_t lds) {
    note(&s_scores, br, bc);
    real->attn_scores(br, bc, n, scale, A, lda, B, ldb, S, lds);
}
static void spy_scores_kp(int64_t br, int64_t bc, int64_t n, float scale, const float *A,
                          int64_t lda, const float *Kp, float *S, int64_t lds) {
    note(&s_skp, br, bc);
    real->attn_scores_kp(br, bc, n, scale, A, lda, Kp, S, lds);
}
static void spy_ukr(int64_t k, const float *a, const float *b, float alpha, float beta, float *c,
                    int64_t ldc, int m, int n) {
    note(&s_ukr, m, n);
    real->gemm_ukr(k, a, b, alpha, beta, c, ldc, m, n);
}

/* The "R x C tiles" of the line of buf that starts with label (0 if there is none). */
static int tiles_of(const char *buf, const char *label, long long *r, long long *c) {
    const char *p = strstr(buf, label);
    for (; p && *p && !(p[0] == '\n' && p[1] == ' ' && p[2] == ' ' && p[3] != ' '); p++)
        if (isdigit((unsigned char)*p) && !isdigit((unsigned char)p[-1]) &&
            sscanf(p, "%lld x %lld tiles", r, c) == 2)
            return 1;
    return 0;
}

/* What mha_ctx_describe prints is what runs: the forward calls attn_fwd (attn_fwd_drop with
 * dropout) and nothing else on the printed fused tiles, the backward the separate kernels
 * (attn_scores_kp, not attn_scores) on the printed tiles, the gemm the printed micro-kernel
 * on MR x NR blocks; per ISA. */
TEST(describe_reports_what_runs) {
    enum {
        B = 1,
        H = 2,
        L = 200,
        S = 300,
        D = 16
    };
    static float q[B * H * L * D], k[B * H * S * D], v[B * H * S * D], o[B * H * L * D];
    static float lse[B * H * L], dq[B * H * L * D], dk[B * H * S * D], dv[B * H * S * D];
    static float A[100 * 100], C[100 * 100];
    for (int i = 0; i < B * H * S * D; i++) k[i] = v[i] = (float)(i % 7) / 7;
    for (int i = 0; i < B * H * L * D; i++) q[i] = (float)(i % 5) / 5;
    int64_t sq[4] = {B, H, L, D}, sk[4] = {B, H, S, D}, sl[3] = {B, H, L};
    mha_tensor tq = mha_tensor_make(q, 4, sq), tk = mha_tensor_make(k, 4, sk);
    mha_tensor tv = mha_tensor_make(v, 4, sk), to = mha_tensor_make(o, 4, sq);
    mha_tensor tl = mha_tensor_make(lse, 3, sl), tdq = mha_tensor_make(dq, 4, sq);
    mha_tensor tdk = mha_tensor_make(dk, 4, sk), tdv = mha_tensor_make(dv, 4, sk);
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    ASSERT_OK(ctx, mha_ctx_set_threads(ctx, 1));
    FOR_EACH_ISA(ctx) {
        real = mha__ctx_kernels(ctx);
        char buf[2048];
        ASSERT_OK(ctx, mha_ctx_describe(ctx, buf, sizeof buf));
        long long fr, fc, br, bc;
        int mr, nr, kc, mc, nc;
        ASSERT_TRUE(tiles_of(buf, "  forward", &fr, &fc) && tiles_of(buf, "  backward", &br, &bc));
        const char *g = strstr(buf, "  gemm micro");
        ASSERT_TRUE(g && strstr(g, real->gemm_ukr_name) && strstr(buf, real->gemm_pack_name));
        ASSERT_TRUE(sscanf(strstr(g, "MR "), "MR %d x NR %d; blocks KC %d, MC %d, NC %d", &mr, &nr,
                           &kc, &mc, &nc) == 5);
        ASSERT_TRUE(kc == real->gemm_kc && mc == real->gemm_mc && nc == real->gemm_nc);
        char dec[64]; /* the decoding kernel, the table's own (every table has one) */
        snprintf(dec, sizeof dec, "  decoding      attn_decode (%s)", real->name);
        ASSERT_TRUE(strstr(buf, dec) != NULL);
        mha_kernels spy = *real;
        spy.attn_fwd = spy_fwd, spy.attn_fwd_drop = spy_drop, spy.attn_scores = spy_scores;
        spy.attn_scores_kp = spy_scores_kp;
        spy.gemm_ukr = spy_ukr;
        ctx->kern = &spy;
        mha_attn_params p = mha_attn_params_default();
        memset(&s_fwd, 0, sizeof s_fwd), memset(&s_scores, 0, sizeof s_scores);
        memset(&s_skp, 0, sizeof s_skp);
        ASSERT_OK(ctx, mha_attn_forward(ctx, &p, &tq, &tk, &tv, NULL, &to, &tl, NULL));
        ASSERT_TRUE(s_fwd.r == fr && s_fwd.c == fc && s_scores.calls == 0 && s_skp.calls == 0);
        p.dropout_p = 0.25f;
        memset(&s_fwd, 0, sizeof s_fwd), memset(&s_drop, 0, sizeof s_drop);
        ASSERT_OK(ctx, mha_attn_forward(ctx, &p, &tq, &tk, &tv, NULL, &to, &tl, NULL));
        ASSERT_TRUE(s_drop.r == fr && s_drop.c == fc && s_fwd.calls == 0);
        ASSERT_OK(ctx,
                  mha_attn_backward(ctx, &p, &tq, &tk, &tv, NULL, &to, &tl, &to, &tdq, &tdk, &tdv));
        /* the backward's scores on keys packed once per key tile (attn_scores_kp) */
        ASSERT_TRUE(s_skp.r == br && s_skp.c == bc && s_scores.calls == 0 && s_fwd.calls == 0);
        memset(&s_ukr, 0, sizeof s_ukr);
        ASSERT_OK(ctx, mha_sgemm(ctx, 0, 0, 100, 100, 100, 1.0f, A, 100, A, 100, 0.0f, C, 100));
        ASSERT_TRUE(s_ukr.r == mr && s_ukr.c == nr && s_ukr.calls > 0);
        ctx->kern = real;
        /* and those are the table's numbers (the fused tiles differ from the backward's on
         * the SIMD tables: the old description printed the backward's as the forward's) */
        ASSERT_TRUE(fr == real->attn_fwd_br && fc == real->attn_fwd_bc);
        ASSERT_TRUE(br == real->attn_br && bc == real->attn_bc);
        ASSERT_TRUE(mr == real->gemm_mr && nr == real->gemm_nr);
        ASSERT_TRUE(strstr(buf, " softmax (") == NULL);
    }
    mha_ctx_free(ctx);
}

int main(void) {
    RUN(tables_complete);
    RUN(best_isa);
    RUN(describe_reports_what_runs);
    return harness_report();
}
