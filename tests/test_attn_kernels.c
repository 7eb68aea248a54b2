/* test_attn_kernels.c - the attention tile kernels (kernels.h, ATTENTION TILE KERNELS) of every
 * ISA this machine runs, against a float64 reference and against the generic kernels.
 *
 * Products (scores, pv, ptv): every br in 1..attn_br, key counts at the vector and tile edges,
 * head dims {1, 7, 16, 64, 80, 128} plus 200 (past the 128-deep packing chunk), leading
 * dimensions wider than the rows (pads must stay untouched). Tolerance: the worst-case bound
 * of a float sum of n + 2 terms, gamma = (n + 2) * 2^-24 times the sum of |terms|.
 * Probs (and the generic softmax step that the generic fused forward uses): every combination
 * of pad, bmask and fmask, col_end and diag cutting the tile, -inf float masks, fully masked
 * rows, rows whose running max is still -inf; excluded keys must be exactly 0. Position
 * independence: a row block computed alone is bitwise equal to the same rows inside a taller
 * tile. exp, through attn_probs (the vectorized exp of the SIMD tables): a dense sweep of
 * [-88, 1] (max relative error <= 1e-6) and special values. Fused forward (attn_kpack +
 * attn_fwd): the (m, l, O) state update against float64 and the generic table for every mask
 * kind at tile edges, unchanged rows without allowed keys, and row-block independence; scores
 * hundreds apart, float masks down to -1e30 and -inf, a NaN row; the forward driver on that
 * path against float64 and bitwise equal for 1, 2 and 3 threads.
 * Dropout: attn_dropout (SIMD Philox) bitwise equal to the generic kernel on random tiles
 * (any br, bc, i0, j0 mod 4, thresholds 0 .. 2^32 - 1, counters past 2^32), the generic one
 * equal to the scheme's scalar definition mha__dropout_keep; attn_dropout_apply bitwise equal
 * to the generic (NaN inputs dropped to exactly 0); attn_fwd_drop as attn_fwd above, with
 * l over every probability and O over the kept ones only; the driver with dropout against
 * float64 and bitwise equal for 1, 2 and 3 threads. */
#include "harness.h"
#include "attn/attn_common.h" /* mha__dropout_keep, mha__attn_dropout_make: the scheme */
#include "kernels/kernels.h"
#include "kernels/philox.h"

static uint64_t rng = 88172645463325252ull;
static double urand(void) { /* [0, 1) */
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (double)(rng >> 11) * (1.0 / 9007199254740992.0);
}
static float frand(void) { return (float)(2 * urand() - 1); }

#define EPS (1.0 / 16777216.0) /* 2^-24 */
#define LD_PAD 5               /* leading dimensions this much wider than the rows */
#define SENTINEL 777.0f

static int nisa;
static const mha_kernels *isas[3];

/* |got - want| <= tol[i] for each i; prints the worst. */
static int near_each(const char *what, const char *isa, const float *got, const double *want,
                     const double *tol, int64_t n, int64_t br, int64_t bc, int64_t d) {
    int64_t worst = -1;
    double wx = 0;
    for (int64_t i = 0; i < n; i++) {
        double e = fabs(got[i] - want[i]) - tol[i];
        if (isnan(got[i]) != isnan(want[i]) || e > wx || (e > 0 && worst < 0)) worst = i, wx = e;
        if (isnan(got[i]) != isnan(want[i])) break;
    }
    if (worst >= 0 && !(wx <= 0)) {
        FAILF("%s %s (br %lld, bc %lld, n %lld): [%lld] got %.9g, expected %.9g (tol %.3g)", isa,
              what, (long long)br, (long long)bc, (long long)d, (long long)worst, got[worst],
              want[worst], tol[worst]);
        return 0;
    }
    return 1;
}

static float *fbuf(int64_t n) { return malloc(sizeof(float) * (size_t)(n > 0 ? n : 1)); }
static double *dbuf(int64_t n) { return malloc(sizeof(double) * (size_t)(n > 0 ? n : 1)); }

/* One product case for all three kernels. A [R, lda] rows of q/dout, B [C, ldb] keys. */
static int check_products(const mha_kernels *kk, const mha_kernels *gen, int64_t br, int64_t bc,
                          int64_t n) {
    int ok = 1;
    int64_t lda = n + LD_PAD, lds = bc + LD_PAD, ldo = n + LD_PAD + 3;
    int64_t R = br > bc ? br : bc;
    float *A = fbuf(R * lda), *Bm = fbuf(R * lda), *S = fbuf(br * lds), *Sg = fbuf(br * lds);
    float *P = fbuf(br * lds), *O = fbuf(R * ldo), *Og = fbuf(R * ldo), *O0 = fbuf(R * ldo);
    float alpha[256];
    int64_t NB = R * (ldo > lds ? ldo : lds); /* any reference array below */
    double *want = dbuf(NB), *tol = dbuf(NB), *wg = dbuf(NB);
    float *got = fbuf(NB);
    for (int64_t t = 0; t < R * lda; t++) A[t] = frand(), Bm[t] = frand();
    for (int64_t t = 0; t < br * lds; t++) P[t] = urand() < 0.2 ? 0.0f : frand();
    for (int64_t t = 0; t < R * ldo; t++) O0[t] = frand();
    for (int64_t r = 0; r < br; r++) alpha[r] = (float)urand();
    const float scale = 0.37f;
    /* scores: S = scale A B^T */
    for (int64_t t = 0; t < br * lds; t++) S[t] = Sg[t] = SENTINEL;
    kk->attn_scores(br, bc, n, scale, A, lda, Bm, lda, S, lds);
    gen->attn_scores(br, bc, n, scale, A, lda, Bm, lda, Sg, lds);
    for (int64_t r = 0; r < br; r++)
        for (int64_t c = 0; c < lds; c++) {
            int64_t t = r * lds + c;
            double s = 0, mag = 0;
            for (int64_t d = 0; c < bc && d < n; d++) { /* keys past bc do not exist */
                double x = (double)A[r * lda + d] * Bm[c * lda + d];
                s += x, mag += fabs(x);
            }
            want[t] = c < bc ? s * scale : SENTINEL;
            tol[t] = c < bc ? (n + 2) * EPS * mag * scale + 1e-30 : 0;
            wg[t] = Sg[t];
        }
    ok &= near_each("scores vs float64", kk->name, S, want, tol, br * lds, br, bc, n);
    for (int64_t t = 0; t < br * lds; t++) tol[t] *= 2;
    ok &= near_each("scores vs generic", kk->name, S, wg, tol, br * lds, br, bc, n);
    /* scores_kp: bit for bit scores, on the keys packed by attn_kpack as a tile of bc keys and
     * of more (the first bc used); n == 0 reads no Kp */
    const int64_t FBC = kk->attn_fwd_bc, kpn = FBC * n;
    float *Kp = aligned_alloc(64, (size_t)(kpn * 4 + 63) / 64 * 64);
    for (int wide = 0; wide < 2 && ok; wide++) {
        const int64_t bcp = wide ? (bc + 9 < FBC ? bc + 9 : FBC) : bc;
        float *Bw = fbuf(bcp * lda);
        memcpy(Bw, Bm, sizeof(float) * (size_t)(R * lda < bcp * lda ? R * lda : bcp * lda));
        for (int64_t t = R * lda; t < bcp * lda; t++) Bw[t] = frand();
        kk->attn_kpack(bcp, n, Bw, lda, Kp);
        for (int64_t t = 0; t < br * lds; t++) Sg[t] = SENTINEL;
        kk->attn_scores_kp(br, bc, n, scale, A, lda, Kp, Sg, lds);
        if (memcmp(S, Sg, sizeof(float) * (size_t)(br * lds)) != 0) {
            FAILF("%s scores_kp (packed tile of %lld keys) != scores: br %lld bc %lld n %lld",
                  kk->name, (long long)bcp, (long long)br, (long long)bc, (long long)n);
            ok = 0;
        }
        free(Bw);
    }
    free(Kp);
    kk->attn_scores(br, bc, 0, scale, A, lda, Bm, lda, S, lds);
    kk->attn_scores_kp(br, bc, 0, scale, A, lda, NULL, Sg, lds);
    if (ok && memcmp(S, Sg, sizeof(float) * (size_t)(br * lds)) != 0) {
        FAILF("%s scores_kp n 0 != scores: br %lld bc %lld", kk->name, (long long)br,
              (long long)bc);
        ok = 0;
    }
    /* pv: O = diag(alpha) O + P X, with and without alpha */
    for (int with_alpha = 0; with_alpha < 2 && ok; with_alpha++) {
        const float *al = with_alpha ? alpha : NULL;
        memcpy(O, O0, sizeof(float) * (size_t)(R * ldo));
        memcpy(Og, O0, sizeof(float) * (size_t)(R * ldo));
        for (int64_t x = 0; x < ldo * (R - br); x++) O[br * ldo + x] = Og[br * ldo + x] = SENTINEL;
        for (int64_t r = 0; r < br; r++) O[r * ldo + n] = Og[r * ldo + n] = SENTINEL;
        kk->attn_pv(br, bc, n, P, lds, Bm, lda, al, O, ldo);
        gen->attn_pv(br, bc, n, P, lds, Bm, lda, al, Og, ldo);
        for (int64_t r = 0; r < br; r++)
            for (int64_t x = 0; x <= n; x++) {
                int64_t t = r * (n + 1) + x;
                double a = al ? al[r] : 1.0, o = O0[r * ldo + x];
                double s = a * o, mag = fabs(s);
                for (int64_t c = 0; c < bc; c++) {
                    double y = (double)P[r * lds + c] * Bm[c * lda + x];
                    s += y, mag += fabs(y);
                }
                want[t] = x < n ? s : SENTINEL, tol[t] = x < n ? (bc + 3) * EPS * mag : 0;
                wg[t] = Og[r * ldo + x], got[t] = O[r * ldo + x];
            }
        ok &= near_each(al ? "pv (alpha) vs float64" : "pv vs float64", kk->name, got, want, tol,
                        br * (n + 1), br, bc, n);
        for (int64_t t = 0; t < br * (n + 1); t++) tol[t] *= 2;
        ok &= near_each("pv vs generic", kk->name, got, wg, tol, br * (n + 1), br, bc, n);
    }
    /* ptv: G[bc, n] += P^T X (X = A rows) */
    memcpy(O, O0, sizeof(float) * (size_t)(R * ldo));
    memcpy(Og, O0, sizeof(float) * (size_t)(R * ldo));
    for (int64_t c = 0; c < bc; c++) O[c * ldo + n] = Og[c * ldo + n] = SENTINEL;
    kk->attn_ptv(br, bc, n, P, lds, A, lda, O, ldo);
    gen->attn_ptv(br, bc, n, P, lds, A, lda, Og, ldo);
    for (int64_t c = 0; c < bc; c++)
        for (int64_t x = 0; x <= n; x++) {
            int64_t t = c * (n + 1) + x;
            double s = O0[c * ldo + x], mag = fabs(s);
            for (int64_t r = 0; r < br; r++) {
                double y = (double)P[r * lds + c] * A[r * lda + x];
                s += y, mag += fabs(y);
            }
            want[t] = x < n ? s : SENTINEL, tol[t] = x < n ? (br + 3) * EPS * mag : 0;
            wg[t] = Og[c * ldo + x], got[t] = O[c * ldo + x];
        }
    ok &= near_each("ptv vs float64", kk->name, got, want, tol, bc * (n + 1), br, bc, n);
    for (int64_t t = 0; t < bc * (n + 1); t++) tol[t] *= 2;
    ok &= near_each("ptv vs generic", kk->name, got, wg, tol, bc * (n + 1), br, bc, n);
    free(A), free(Bm), free(S), free(Sg), free(P), free(O), free(Og), free(O0);
    free(want), free(tol), free(wg), free(got);
    return ok;
}

TEST(products_every_edge) {
    const mha_kernels *gen = mha__kernels_for(MHA_ISA_GENERIC);
    const int64_t ns[7] = {1, 7, 16, 64, 80, 128, 200};
    for (int i = 0; i < nisa; i++) {
        const mha_kernels *kk = isas[i];
        int64_t BR = kk->attn_br, BC = kk->attn_bc;
        int64_t bcs[8] = {1, 7, 15, 16, 17, BC - 1, BC, 33};
        /* the backward packs its key tiles by attn_kpack for attn_scores_kp (kernels.h) */
        ASSERT_TRUE(kk->attn_scores_kp != NULL && BC <= kk->attn_fwd_bc);
        /* every br with two (bc, n) pairs */
        for (int64_t br = 1; br <= BR; br++) {
            if (!check_products(kk, gen, br, BC, 64)) return;
            if (!check_products(kk, gen, br, 17, 80)) return;
        }
        /* every bc edge and head dim for a few br */
        int64_t brs[4] = {1, 5, BR - 1, BR};
        for (int a = 0; a < 4; a++)
            for (int c = 0; c < 8; c++)
                for (int e = 0; e < 7; e++) {
                    if (bcs[c] < 1 || bcs[c] > BC || brs[a] < 1) continue;
                    if (!check_products(kk, gen, brs[a], bcs[c], ns[e])) return;
                }
    }
}

/* Rows r0 .. r0+k of a tall tile computed as their own tile give bitwise the same scores, pv
 * and ptv partial sums: the arithmetic of an element never depends on the tile shape. */
TEST(products_position_independent) {
    for (int i = 0; i < nisa; i++) {
        const mha_kernels *kk = isas[i];
        int64_t BR = kk->attn_br, BC = kk->attn_bc, n = 80, ld = 96;
        float *A = fbuf(BR * ld), *Bm = fbuf(BC * ld), *S1 = fbuf(BR * BC), *S2 = fbuf(BR * BC);
        int64_t R = BR > BC ? BR : BC; /* O: [BR, ld] for pv, [BC, ld] for ptv */
        float *O1 = fbuf(R * ld), *O2 = fbuf(R * ld), al[256];
        for (int64_t t = 0; t < BR * ld; t++) A[t] = frand();
        for (int64_t t = 0; t < BC * ld; t++) Bm[t] = frand();
        for (int64_t r = 0; r < BR; r++) al[r] = (float)urand();
        kk->attn_scores(BR, BC, n, 0.5f, A, ld, Bm, ld, S1, BC);
        for (int64_t t = 0; t < BR * ld; t++) O1[t] = O2[t] = frand();
        kk->attn_pv(BR, BC, n, S1, BC, Bm, ld, al, O1, ld);
        int bad = 0;
        for (int64_t r0 = 0; r0 < BR && !bad; r0 += 3) {
            int64_t k = BR - r0 < 5 ? BR - r0 : 5;
            kk->attn_scores(k, BC - 3, n, 0.5f, A + r0 * ld, ld, Bm + 3 * ld, ld, S2, BC);
            for (int64_t r = 0; r < k; r++)
                bad |= memcmp(S2 + r * BC, S1 + (r0 + r) * BC + 3,
                              sizeof(float) * (size_t)(BC - 3)) != 0;
        }
        for (int64_t r0 = 0; r0 < BR; r0 += 5) { /* pv by blocks of 5 rows */
            int64_t k = BR - r0 < 5 ? BR - r0 : 5;
            kk->attn_pv(k, BC, n, S1 + r0 * BC, BC, Bm, ld, al + r0, O2 + r0 * ld, ld);
        }
        bad |= memcmp(O1, O2, sizeof(float) * (size_t)(BR * ld)) != 0;
        /* ptv: keys 2.. of the tile alone vs the whole tile */
        for (int64_t t = 0; t < R * ld; t++) O1[t] = O2[t] = frand();
        kk->attn_ptv(BR, BC, n, S1, BC, A, ld, O1, ld);
        kk->attn_ptv(BR, 2, n, S1, BC, A, ld, O2, ld);
        kk->attn_ptv(BR, BC - 2, n, S1 + 2, BC, A, ld, O2 + 2 * ld, ld);
        bad |= memcmp(O1, O2, sizeof(float) * (size_t)(BC * ld)) != 0;
        free(A), free(Bm), free(S1), free(S2), free(O1), free(O2);
        if (bad)
            FAILF("%s: a sub-tile is not bitwise equal to the same rows of a tall tile", kk->name);
    }
}

/* Is key c of row r excluded? (kernels.h mask rules) */
static int excluded(const mha__attn_tile_mask *mk, int64_t r, int64_t c, int64_t bc) {
    return c >= mha__attn_tile_row_end(mk, r, bc) || c < mha__attn_tile_row_start(mk, r, bc) ||
           (mk->pad && mk->pad[c]) || (mk->bmask && mk->bmask[r * mk->ld_mask + c]);
}

/* The score transforms (softcap, then ALiBi) of a scaled score x of row r, key c in float64. */
static double mod64(const mha__attn_tile_mask *mk, double x, int64_t r, int64_t c) {
    if (mk->softcap > 0) x = mk->softcap * tanh(x / mk->softcap);
    if (mk->slope != 0) x -= mk->slope * fabs((double)(r + mk->adiag - c));
    return x;
}

/* The transforms a mask kind k >= 4 adds to mk (k & 1: softcap 2.5, k & 2: ALiBi, k & 4: a
 * window's left bound), named into name. */
static void add_mods(mha__attn_tile_mask *mk, int k, char *name, size_t cap) {
    if (k & 1) mk->softcap = 2.5f;
    if (k & 2) mk->slope = 0.3f, mk->adiag = 5;
    if (k & 4) mk->has_lo = 1, mk->lo = -9;
    snprintf(name, cap, "%s%s%s", k & 1 ? "softcap " : "", k & 2 ? "alibi " : "",
             k & 4 ? "window" : "");
}

/* The generic online-softmax step (mha__attn_softmax_generic: the middle step of the generic
 * fused forward, the oracle of the SIMD ones) over the tile S0 [br, bc] against float64: m,
 * alpha, l and the probabilities; excluded keys exactly 0, rows without an allowed key keep
 * m and l and get alpha 1. */
static int check_softmax_generic(int64_t br, int64_t bc, const float *S0, int64_t lds,
                                 const mha__attn_tile_mask *mk, const float *m0) {
    float *S = fbuf(br * lds), m[256], l[256], a[256];
    double *want = dbuf(br * lds), *tol = dbuf(br * lds);
    const float *fm = mk->fmask;
    int64_t ldm = mk->ld_mask;
    int ok = 1;
    memcpy(S, S0, sizeof(float) * (size_t)(br * lds));
    for (int64_t r = 0; r < br; r++) m[r] = m0[r], l[r] = 2.0f, a[r] = NAN;
    mha__attn_softmax_generic(br, bc, S, lds, mk, m, l, a);
    for (int64_t r = 0; r < br && ok; r++) {
        float mx = m0[r]; /* the reference from the same float sums s = mod(S) + fmask */
        for (int64_t c = 0; c < bc; c++) {
            float x =
                mha__attn_score_mod(mk, S0[r * lds + c], r, c) + (fm ? fm[r * ldm + c] : 0.0f);
            if (!excluded(mk, r, c, bc) && x > mx) mx = x;
        }
        double sum = 0;
        for (int64_t c = 0; c < lds; c++) {
            int64_t t = r * lds + c;
            float x =
                c < bc ? mha__attn_score_mod(mk, S0[t], r, c) + (fm ? fm[r * ldm + c] : 0.0f) : 0;
            double p = c >= bc                                     ? SENTINEL
                       : mx == -INFINITY || excluded(mk, r, c, bc) ? 0.0
                                                                   : exp((double)(x - mx));
            if (c < bc) sum += p;
            want[t] = p, tol[t] = 2e-6 * p;
        }
        if (mx == -INFINITY) {
            if (a[r] != 1.0f || m[r] != m0[r] || l[r] != 2.0f) {
                FAILF("generic softmax row %lld without allowed keys: alpha %g m %g l %g, "
                      "expected 1, %g, 2",
                      (long long)r, a[r], m[r], l[r], m0[r]);
                ok = 0;
            }
            continue;
        }
        double al = m0[r] == -INFINITY ? 0 : exp((double)(m0[r] - mx)), lw = al * 2.0 + sum;
        if (m[r] != mx || fabs(a[r] - al) > 2e-6 * al || fabs(l[r] - lw) > 1e-5 * lw) {
            FAILF("generic softmax row %lld (bc %lld): m %.9g/%.9g alpha %.9g/%.9g l %.9g/%.9g "
                  "(kernel/ref)",
                  (long long)r, (long long)bc, m[r], mx, a[r], al, l[r], lw);
            ok = 0;
        }
    }
    ok = ok && near_each("softmax P vs float64", "generic", S, want, tol, br * lds, br, bc, 0);
    for (int64_t t = 0; t < br * lds && ok; t++)
        if (want[t] == 0.0 && S[t] != 0.0f) {
            FAILF("generic softmax: excluded key [%lld] gave %g", (long long)t, S[t]);
            ok = 0;
        }
    free(S), free(want), free(tol);
    return ok;
}

TEST(softmax_probs_masks) {
    const mha_kernels *gen = mha__kernels_for(MHA_ISA_GENERIC);
    for (int i = 0; i < nisa; i++) {
        const mha_kernels *kk = isas[i];
        int64_t BR = kk->attn_br, BC = kk->attn_bc, ldm = BC + 9, lds = BC + LD_PAD;
        uint8_t *pad = malloc((size_t)ldm), *bm = malloc((size_t)(BR * ldm));
        float *fm = fbuf(BR * ldm), *S0 = fbuf(BR * lds), *S = fbuf(BR * lds), *Sg = fbuf(BR * lds);
        float *dcap = fbuf(BR * lds);
        double *want = dbuf(BR * lds), *tol = dbuf(BR * lds);
        float m0[256], lse[256];
        for (int64_t t = 0; t < ldm; t++) pad[t] = urand() < 0.15;
        for (int64_t t = 0; t < BR * ldm; t++) {
            bm[t] = urand() < 0.15;
            fm[t] = urand() < 0.1 ? -INFINITY : 3 * frand();
        }
        for (int64_t c = 0; c < ldm; c++) bm[3 * ldm + c] = 1; /* row 3: fully bool-masked */
        for (int64_t c = 0; c < ldm; c++) fm[4 * ldm + c] = -INFINITY; /* row 4: all -inf */
        int64_t bcs[5] = {1, 13, 16, BC - 1, BC};
        int64_t col_ends[4] = {BC + 10, BC / 2, 0, 5};
        int64_t diags[4] = {MHA__ATTN_NO_DIAG, 0, -3, 20};
        int bad = 0;
        for (int f = 0; f < 16 && !bad; f++)
            for (int ce = 0; ce < 4 && !bad; ce++)
                for (int dg = 0; dg < 4 && !bad; dg++)
                    for (int bi = 0; bi < 5 && !bad; bi++) {
                        int64_t bc = bcs[bi], br = (f + ce + dg + bi) % 2 ? BR : BR - 3;
                        mha__attn_tile_mask mk = {.col_end = col_ends[ce],
                                                  .diag = diags[dg],
                                                  .pad = f & 1 ? pad : NULL,
                                                  .bmask = f & 2 ? bm : NULL,
                                                  .fmask = f & 4 ? fm : NULL,
                                                  .ld_mask = ldm};
                        char mname[64];
                        if (f >= 8) add_mods(&mk, (f & 7) | ((ce + dg + bi) % 7 + 1), mname, 64);
                        for (int64_t t = 0; t < br * lds; t++)
                            S0[t] = t % lds < bc ? 4 * frand() : SENTINEL;
                        for (int64_t r = 0; r < br; r++) {
                            m0[r] = r % 5 == 1 ? -INFINITY : (float)frand();
                            lse[r] = r % 7 == 2 ? -INFINITY : 1.5f + frand();
                        }
                        /* softmax: the generic step (the SIMD tables fuse it into attn_fwd) */
                        if (kk == gen && !check_softmax_generic(br, bc, S0, lds, &mk, m0)) {
                            bad = 1;
                            break;
                        }
                        /* probs */
                        memcpy(S, S0, sizeof(float) * (size_t)(br * lds));
                        memcpy(Sg, S0, sizeof(float) * (size_t)(br * lds));
                        kk->attn_probs(br, bc, S, lds, &mk, lse, dcap);
                        gen->attn_probs(br, bc, Sg, lds, &mk, lse, NULL);
                        for (int64_t r = 0; r < br; r++)
                            for (int64_t c = 0; c < lds; c++) {
                                int64_t t = r * lds + c;
                                double x = c < bc ? mod64(&mk, S0[t], r, c) +
                                                        (mk.fmask ? fm[r * ldm + c] : 0.0f)
                                                  : 0;
                                double p = c >= bc ? SENTINEL
                                           : lse[r] == -INFINITY || excluded(&mk, r, c, bc)
                                               ? 0.0
                                               : exp(x - lse[r]);
                                /* a transformed score has more roundings (tanh: a few ulp;
                                 * ALiBi: the float score's own rounding, relative to |x|) */
                                double rel = mk.softcap > 0 ? 2e-5 : 2e-6;
                                if (mk.slope != 0) rel += 1.2e-7 * (fabs(x) + fabs(lse[r]));
                                want[t] = p, tol[t] = rel * p + 1e-30;
                                double th = c < bc && mk.softcap > 0 ? tanh(S0[t] / 2.5) : 0;
                                if (c < bc && mk.softcap > 0 &&
                                    fabs(dcap[t] - (1 - th * th)) > 1e-6) {
                                    FAILF("%s probs (%s): dcap[%lld] %.9g, expected %.9g", kk->name,
                                          mname, (long long)t, dcap[t], 1 - th * th);
                                    bad = 1;
                                }
                                if (p == 0.0 && (S[t] != 0.0f || Sg[t] != 0.0f)) {
                                    FAILF("%s probs: excluded key [%lld] gave %g (generic %g)",
                                          kk->name, (long long)t, S[t], Sg[t]);
                                    bad = 1;
                                }
                            }
                        if (bad || !near_each("probs vs float64", kk->name, S, want, tol, br * lds,
                                              br, bc, 0))
                            bad = 1;
                    }
        free(pad), free(bm), free(fm), free(S0), free(S), free(Sg), free(want), free(tol);
        free(dcap);
        if (bad) return;
    }
}

/* FUSED FORWARD (attn_kpack + attn_fwd): one online-softmax step of a tile pair, against a
 * float64 reference of the state update (m, l, O) and against the generic table. Rows enter
 * with a running state (some with m = -inf, l = 0, O = 0: nothing seen yet); masks of every
 * kind cut the tile; rows without an allowed finite key must leave m, l, O bitwise unchanged. */
typedef struct {
    int64_t br, bc, n, nv, lda, ldk, ldv, ldo, ldp;
    float *A, *K, *V, *O0, *m0, *l0, *P, *Kp;
    const uint8_t *keep; /* NULL: attn_fwd; else attn_fwd_drop with keep [br, ldkeep] */
    int64_t ldkeep;
} fwd_case;

/* Runs kk's fused step on a copy of the state: O [br, ldo], m, l [br]. */
static void fwd_run(const mha_kernels *kk, const fwd_case *f, const mha__attn_tile_mask *mk,
                    float *O, float *m, float *l) {
    memcpy(O, f->O0, sizeof(float) * (size_t)(f->br * f->ldo));
    memcpy(m, f->m0, sizeof(float) * (size_t)f->br);
    memcpy(l, f->l0, sizeof(float) * (size_t)f->br);
    int64_t fbc = kk->attn_fwd_bc ? kk->attn_fwd_bc : kk->attn_bc;
    for (int64_t t = 0; t < fbc * f->n; t++) f->Kp[t] = NAN; /* pads must be ignored */
    kk->attn_kpack(f->bc, f->n, f->K, f->ldk, f->Kp);
    if (f->keep)
        kk->attn_fwd_drop(f->br, f->bc, f->n, f->nv, 0.37f, f->A, f->lda, f->Kp, f->V, f->ldv, mk,
                          m, l, O, f->ldo, f->P, f->ldp, f->keep, f->ldkeep);
    else
        kk->attn_fwd(f->br, f->bc, f->n, f->nv, 0.37f, f->A, f->lda, f->Kp, f->V, f->ldv, mk, m, l,
                     O, f->ldo, f->P, f->ldp);
}

static int check_fwd(const mha_kernels *kk, const mha_kernels *gen, fwd_case *f,
                     const mha__attn_tile_mask *mk, const char *mname) {
    int64_t br = f->br, bc = f->bc, n = f->n, nv = f->nv, ldo = f->ldo;
    float *O = fbuf(br * ldo), *Og = fbuf(br * ldo), m[256], l[256], mg[256], lg[256];
    double *s = dbuf(bc), *want = dbuf(br * ldo), *tol = dbuf(br * ldo), *wg = dbuf(br * ldo);
    fwd_run(kk, f, mk, O, m, l);
    fwd_run(gen, f, mk, Og, mg, lg);
    int ok = 1;
    for (int64_t r = 0; r < br && ok; r++) {
        const float *fm = mk->fmask ? mk->fmask + r * mk->ld_mask : NULL;
        double mx = f->m0[r];
        for (int64_t c = 0; c < bc; c++) {
            double x = 0;
            for (int64_t d = 0; d < n; d++)
                x += (double)f->A[r * f->lda + d] * f->K[c * f->ldk + d];
            x = mod64(mk, x * 0.37f, r, c) + (fm ? fm[c] : 0.0f);
            s[c] = excluded(mk, r, c, bc) ? -INFINITY : x;
            if (s[c] > mx) mx = s[c];
        }
        for (int64_t x = 0; x < ldo; x++) {
            int64_t t = r * ldo + x;
            want[t] = f->O0[t], tol[t] = 0, wg[t] = Og[t];
        }
        if (mx == -INFINITY) { /* nothing allowed yet: state bitwise unchanged */
            if (memcmp(&m[r], &f->m0[r], sizeof(float)) || l[r] != f->l0[r] ||
                memcmp(O + r * ldo, f->O0 + r * ldo, sizeof(float) * (size_t)ldo)) {
                FAILF("%s fwd (%s, br %lld, bc %lld, n %lld): row %lld without allowed keys "
                      "changed: m %g l %g",
                      kk->name, mname, (long long)br, (long long)bc, (long long)n, (long long)r,
                      m[r], l[r]);
                ok = 0;
            }
            continue;
        }
        double al = f->m0[r] == -INFINITY ? 0 : exp(f->m0[r] - mx), sum = 0;
        for (int64_t x = 0; x < nv; x++)
            want[r * ldo + x] = al * f->O0[r * ldo + x], tol[r * ldo + x] = fabs(want[r * ldo + x]);
        for (int64_t c = 0; c < bc; c++) {
            if (s[c] == -INFINITY) continue;
            double p = exp(s[c] - mx);
            sum += p; /* l: every probability; O: the kept ones */
            if (f->keep && !f->keep[r * f->ldkeep + c]) continue;
            for (int64_t x = 0; x < nv; x++) {
                double y = p * f->V[c * f->ldv + x];
                want[r * ldo + x] += y, tol[r * ldo + x] += fabs(y);
            }
        }
        for (int64_t x = 0; x < nv; x++) tol[r * ldo + x] = 2e-5 * tol[r * ldo + x] + 1e-6;
        double lw = al * f->l0[r] + sum;
        if (fabs(m[r] - mx) > 1e-5 * (fabs(mx) + 1) || fabs(l[r] - lw) > 2e-5 * lw ||
            fabs(m[r] - mg[r]) > 1e-5 * (fabs(mx) + 1) || fabs(l[r] - lg[r]) > 2e-5 * lw) {
            FAILF("%s fwd (%s, br %lld, bc %lld, n %lld) row %lld: m %.9g/%.9g/%.9g l "
                  "%.9g/%.9g/%.9g (kernel/ref/generic)",
                  kk->name, mname, (long long)br, (long long)bc, (long long)n, (long long)r, m[r],
                  mx, mg[r], l[r], lw, lg[r]);
            ok = 0;
        }
    }
    const char *w64 = f->keep ? "fwd_drop O vs float64" : "fwd O vs float64";
    ok = ok && near_each(w64, kk->name, O, want, tol, br * ldo, br, bc, n);
    ok = ok && near_each(f->keep ? "fwd_drop O vs generic" : "fwd O vs generic", kk->name, O, wg,
                         tol, br * ldo, br, bc, n);
    free(O), free(Og), free(s), free(want), free(tol), free(wg);
    return ok;
}

TEST(fused_forward_masks_edges) {
    const mha_kernels *gen = mha__kernels_for(MHA_ISA_GENERIC);
    for (int i = 0; i < nisa; i++) {
        const mha_kernels *kk = isas[i];
        if (!kk->attn_fwd || !kk->attn_kpack || !kk->attn_fwd_drop) {
            FAILF("%s: no fused forward (the generic table must have one)", kk->name);
            continue;
        }
        /* the fused kernels' own tile bounds (kernels.h: FBR, FBC) */
        int64_t BR = kk->attn_fwd_br ? kk->attn_fwd_br : kk->attn_br;
        int64_t BC = kk->attn_fwd_bc ? kk->attn_fwd_bc : kk->attn_bc, ldm = BC + 9;
        int64_t brs[6] = {1, 5, 6, 7, BR - 1, BR}, bcs[6] = {1, 7, 16, 17, BC - 1, BC};
        int64_t ns[4][2] = {{64, 64}, {1, 7}, {80, 17}, {128, 0}}; /* (n, nv) */
        uint8_t *pad = malloc((size_t)ldm), *bm = malloc((size_t)(BR * ldm));
        float *fm = fbuf(BR * ldm);
        for (int64_t t = 0; t < ldm; t++) pad[t] = urand() < 0.15;
        for (int64_t t = 0; t < BR * ldm; t++) {
            bm[t] = urand() < 0.15;
            fm[t] = urand() < 0.1 ? -INFINITY : 3 * frand();
        }
        for (int64_t c = 0; c < ldm && BR > 4; c++)
            bm[2 * ldm + c] = 1, fm[4 * ldm + c] = -INFINITY;
        fwd_case f;
        int64_t NMAX = 128 + LD_PAD, ldkeep = BC + 3;
        uint8_t *keep = malloc((size_t)(BR * ldkeep));
        for (int64_t t = 0; t < BR * ldkeep; t++) keep[t] = urand() < 0.7;
        for (int64_t c = 0; c < ldkeep && BR > 3; c++) keep[3 * ldkeep + c] = 0; /* all dropped */
        f.keep = NULL, f.ldkeep = ldkeep;
        f.A = fbuf(BR * NMAX), f.K = fbuf(BC * NMAX), f.V = fbuf(BC * NMAX);
        f.O0 = fbuf(BR * NMAX), f.P = fbuf(BR * (BC + LD_PAD)), f.m0 = fbuf(BR), f.l0 = fbuf(BR);
        f.Kp = aligned_alloc(64, sizeof(float) * (size_t)(BC * 128));
        int cnt = 0, ok = 1;
        for (int a = 0; a < 6 && ok; a++)
            for (int b = 0; b < 6 && ok; b++)
                for (int e = 0; e < 4 && ok; e++) {
                    f.br = brs[a], f.bc = bcs[b], f.n = ns[e][0], f.nv = ns[e][1];
                    f.lda = f.n + LD_PAD, f.ldk = f.n + 3, f.ldv = f.nv + 2, f.ldo = f.nv + 1;
                    f.ldp = BC + LD_PAD;
                    for (int64_t t = 0; t < f.br * f.lda; t++) f.A[t] = 2 * frand();
                    for (int64_t t = 0; t < f.bc * f.ldk; t++) f.K[t] = 2 * frand();
                    for (int64_t t = 0; t < f.bc * f.ldv; t++) f.V[t] = frand();
                    for (int64_t r = 0; r < f.br; r++) {
                        int fresh = r % 4 == 1;
                        f.m0[r] = fresh ? -INFINITY : 2 * frand();
                        f.l0[r] = fresh ? 0.0f : 1.0f + (float)urand();
                        for (int64_t x = 0; x < f.ldo; x++)
                            f.O0[r * f.ldo + x] = fresh ? 0.0f : (x < f.nv ? frand() : SENTINEL);
                    }
                    /* 8 mask kinds, rotating with the case */
                    for (int kind = 0; kind < 16 && ok; kind++, cnt++) {
                        mha__attn_tile_mask mk = {.col_end = f.bc + 10,
                                                  .diag = MHA__ATTN_NO_DIAG,
                                                  .pad = NULL,
                                                  .bmask = NULL,
                                                  .fmask = NULL,
                                                  .ld_mask = ldm};
                        char mods[64], full[128];
                        const char *name = "none";
                        if (kind >= 8) /* masks 0-7 again, each with a mix of the transforms */
                            add_mods(&mk, kind - 7, mods, 64);
                        switch (kind & 7) {
                        case 1: mk.diag = 0, name = "causal"; break;
                        case 2: mk.diag = -3, name = "causal -3"; break;
                        case 3:
                            mk.diag = 20, mk.col_end = f.bc / 2, name = "causal 20, col_end";
                            break;
                        case 4: mk.pad = pad, name = "pad"; break;
                        case 5: mk.bmask = bm, name = "bool"; break;
                        case 6: mk.fmask = fm, name = "float"; break;
                        case 7:
                            mk.pad = pad, mk.bmask = bm, mk.fmask = fm, mk.diag = 2, name = "all";
                            break;
                        }
                        if (kind >= 8)
                            snprintf(full, sizeof full, "%s, %s", name, mods), name = full;
                        f.keep = NULL;
                        ok = check_fwd(kk, gen, &f, &mk, name);
                        f.keep = keep; /* the same step with dropout */
                        ok = ok && check_fwd(kk, gen, &f, &mk, name);
                        f.keep = NULL;
                    }
                }
        /* position independence: blocks of 5 rows alone == the same rows of the whole tile */
        if (ok) {
            f.br = BR, f.bc = BC, f.n = 80, f.nv = 80, f.lda = f.ldk = f.ldv = f.ldo = 80 + 3;
            f.ldp = BC;
            for (int64_t t = 0; t < BR * f.lda; t++) f.A[t] = frand(), f.O0[t] = frand();
            for (int64_t t = 0; t < BC * f.ldk; t++) f.K[t] = frand(), f.V[t] = frand();
            for (int64_t r = 0; r < BR; r++) f.m0[r] = frand(), f.l0[r] = 1;
            mha__attn_tile_mask mk = {
                .col_end = BC, .diag = 7, .pad = pad, .bmask = NULL, .fmask = fm, .ld_mask = ldm};
            float *O1 = fbuf(BR * f.ldo), *O2 = fbuf(BR * f.ldo), m1[256], l1[256], m2[256],
                  l2[256];
            fwd_run(kk, &f, &mk, O1, m1, l1);
            memcpy(O2, f.O0, sizeof(float) * (size_t)(BR * f.ldo));
            memcpy(m2, f.m0, sizeof(float) * (size_t)BR),
                memcpy(l2, f.l0, sizeof(float) * (size_t)BR);
            for (int64_t r0 = 0; r0 < BR; r0 += 5) {
                int64_t k = BR - r0 < 5 ? BR - r0 : 5;
                mha__attn_tile_mask mr = mk;
                mr.diag += r0, mr.fmask += r0 * ldm;
                kk->attn_fwd(k, BC, f.n, f.nv, 0.37f, f.A + r0 * f.lda, f.lda, f.Kp, f.V, f.ldv,
                             &mr, m2 + r0, l2 + r0, O2 + r0 * f.ldo, f.ldo, f.P, f.ldp);
            }
            if (memcmp(O1, O2, sizeof(float) * (size_t)(BR * f.ldo)) ||
                memcmp(m1, m2, sizeof(float) * (size_t)BR) ||
                memcmp(l1, l2, sizeof(float) * (size_t)BR))
                FAILF("%s fwd: blocks of 5 rows differ from the same rows of the whole tile",
                      kk->name);
            free(O1), free(O2);
        }
        free(pad), free(bm), free(fm), free(f.A), free(f.K), free(f.V), free(f.O0), free(f.P);
        free(f.m0), free(f.l0), free(f.Kp), free(keep);
        if (!ok) return;
        printf("  %s fused forward: %d cases\n", kk->name, cnt);
    }
}

/* The forward driver on the fused path (a problem big enough to use threads and several query
 * tiles per head, so packed key tiles are reused across query tiles), without masks, with
 * masks, with masks and dropout (attn_dropout + attn_fwd_drop): out and lse against a float64
 * reference (dropout: mha__dropout_keep), and bitwise identical for 1, 2 and 3 threads. */
/* The forward driver on B x H heads of L queries, S keys (q, k, v, out [B, H, rows, dim] or,
 * bshd, strided views of [B, rows, H, dim] memory) against float64, bitwise equal for 1, 2 and
 * 3 threads: no mask, causal with key padding and a float mask (row 7: every key excluded),
 * and that with dropout. */
static void driver_case(int64_t B, int64_t H, int64_t L, int64_t S, int64_t D, int64_t DV,
                        int bshd) {
    size_t nq = (size_t)(B * H * L * D), nk = (size_t)(B * H * S * D),
           nv = (size_t)(B * H * S * DV);
    size_t no = (size_t)(B * H * L * DV), nl = (size_t)(B * H * L);
    float *q = fbuf((int64_t)nq), *k = fbuf((int64_t)nk), *v = fbuf((int64_t)nv);
    float *fmask = fbuf(L * S), *out[3], *lse[3];
    uint8_t *pad = malloc((size_t)(B * S));
    for (size_t t = 0; t < nq; t++) q[t] = 2 * frand();
    for (size_t t = 0; t < nk; t++) k[t] = 2 * frand();
    for (size_t t = 0; t < nv; t++) v[t] = frand();
    for (int64_t t = 0; t < L * S; t++) fmask[t] = urand() < 0.05 ? -INFINITY : frand();
    for (int64_t t = 0; t < B * S; t++) pad[t] = urand() < 0.1;
    for (int64_t j = 0; j < 4 && L > 7; j++) fmask[7 * S + j] = -INFINITY; /* row 7: none */
        /* element (b, h, row, x) of a [B, H, R, X] tensor: its offset in memory */
#define AT(b, h, r, x, R, X)                                                                       \
    (bshd ? (((b) * (R) + (r)) * H + (h)) * (X) + (x) : (((b)*H + (h)) * (R) + (r)) * (X) + (x))
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    int64_t sq[4] = {B, H, L, D}, sk[4] = {B, H, S, D}, sv[4] = {B, H, S, DV};
    int64_t so[4] = {B, H, L, DV}, sl[3] = {B, H, L};
    int64_t stq[4] = {L * H * D, D, H * D, 1}, stk[4] = {S * H * D, D, H * D, 1};
    int64_t stv[4] = {S * H * DV, DV, H * DV, 1}, sto[4] = {L * H * DV, DV, H * DV, 1};
    mha_tensor tq = mha_tensor_strided(q, 4, sq, bshd ? stq : NULL);
    mha_tensor tk = mha_tensor_strided(k, 4, sk, bshd ? stk : NULL);
    mha_tensor tv = mha_tensor_strided(v, 4, sv, bshd ? stv : NULL);
    double *p = dbuf(S);
    mha_attn_params prm = mha_attn_params_default();
    for (int variant = 0; variant < 3; variant++) {
        mha_mask mk = mha_mask_default();
        prm.dropout_p = variant == 2 ? 0.2f : 0.0f, prm.seed = 9, prm.offset = 4;
        const double ks = 1.0 / (1.0 - prm.dropout_p);
        if (variant) mk.causal = MHA_CAUSAL_TOP_LEFT, mk.key_padding = pad, mk.attn_float = fmask;
        FOR_EACH_ISA(ctx) {
            for (int t = 0; t < 3; t++) {
                out[t] = fbuf((int64_t)no), lse[t] = fbuf((int64_t)nl);
                mha_tensor to = mha_tensor_strided(out[t], 4, so, bshd ? sto : NULL);
                mha_tensor tl = mha_tensor_make(lse[t], 3, sl);
                mha_ctx_set_threads(ctx, t + 1);
                ASSERT_OK(ctx, mha_attn_forward(ctx, &prm, &tq, &tk, &tv, &mk, &to, &tl, NULL));
            }
            int same = !memcmp(out[0], out[1], sizeof(float) * no) &&
                       !memcmp(out[0], out[2], sizeof(float) * no) &&
                       !memcmp(lse[0], lse[1], sizeof(float) * nl) &&
                       !memcmp(lse[0], lse[2], sizeof(float) * nl);
            if (!same)
                FAILF("%s (B %lld H %lld, mask %d): 2 or 3 threads differ from 1 thread",
                      mha_isa_name((mha_isa)isa_i_), (long long)B, (long long)H, variant);
            /* float64 reference */
            int64_t worst = -1;
            double werr = 0;
            for (int64_t bh = 0; bh < B * H && same; bh++)
                for (int64_t i = 0; i < L; i++) {
                    const int64_t b = bh / H, h = bh % H;
                    double mx = -INFINITY, sum = 0;
                    for (int64_t j = 0; j < S; j++) {
                        double x = 0;
                        for (int64_t d = 0; d < D; d++)
                            x += (double)q[AT(b, h, i, d, L, D)] * k[AT(b, h, j, d, S, D)];
                        x *= 1.0f / sqrtf((float)D);
                        if (variant) {
                            if (j > i || pad[b * S + j]) x = -INFINITY;
                            else x += fmask[i * S + j];
                        }
                        p[j] = x;
                        if (x > mx) mx = x;
                    }
                    for (int64_t j = 0; j < S; j++)
                        sum += p[j] = mx == -INFINITY || p[j] == -INFINITY ? 0 : exp(p[j] - mx);
                    double lw = sum > 0 ? mx + log(sum) : -INFINITY, lg = lse[0][bh * L + i];
                    if (!(lw == lg || fabs(lg - lw) <= 1e-5 * (1 + fabs(lw))))
                        worst = AT(b, h, i, 0, L, DV), werr = lg - lw;
                    for (int64_t j = 0; j < S && variant == 2; j++) /* lse: before dropout */
                        p[j] = mha__dropout_keep(&prm, bh, i, j) ? p[j] * ks : 0;
                    for (int64_t x = 0; x < DV; x++) {
                        double o = 0, mag = 0;
                        for (int64_t j = 0; j < S; j++)
                            o += p[j] * v[AT(b, h, j, x, S, DV)],
                                mag += fabs(p[j] * v[AT(b, h, j, x, S, DV)]);
                        o = sum > 0 ? o / sum : 0, mag = sum > 0 ? mag / sum : 0;
                        double e = fabs(out[0][AT(b, h, i, x, L, DV)] - o);
                        if (!(e <= 1e-5 * mag + 1e-6) && e > werr)
                            worst = AT(b, h, i, x, L, DV), werr = e;
                    }
                }
#undef AT
            if (worst >= 0)
                FAILF("%s (B %lld H %lld, mask %d): out/lse at [%lld] off the float64 reference "
                      "by %.3g",
                      mha_isa_name((mha_isa)isa_i_), (long long)B, (long long)H, variant,
                      (long long)worst, werr);
            for (int t = 0; t < 3; t++) free(out[t]), free(lse[t]);
        }
    }
    mha_ctx_set_threads(ctx, 0);
    mha_ctx_free(ctx);
    free(q), free(k), free(v), free(fmask), free(p), free(pad);
}

TEST(fused_forward_driver_threads) { driver_case(2, 2, 150, 333, 48, 40, 0); }

/* Heads many and short enough that a task is a whole head (mha__attn_prefetch_heads: B*H >=
 * 16 x 3 threads) and the fused kernel fetches the next head's rows and the task's out rows
 * as it computes (mha__attn_pf): the same results as above, contiguous and strided. */
TEST(fused_forward_driver_many_heads) {
    driver_case(3, 16, 40, 70, 24, 20, 0);
    driver_case(3, 16, 37, 53, 20, 28, 1);
}

/* A stream of lines (kernels.h, mha__attn_pf) visits every 64-byte line of its spans once, in
 * order (rows of a strided view one by one, rows one after another as one), a step asks for
 * MHA__PF_STEP of them, and the fused kernels' results do not depend on a stream. */
TEST(prefetch_stream) {
    float buf[2 * 3 * 5 * 40];
    int64_t sh[4] = {2, 3, 5, 40}, st[4] = {5 * 3 * 40, 40, 3 * 40, 1};
    mha_tensor c = mha_tensor_make(buf, 4, sh), s = mha_tensor_strided(buf, 4, sh, st);
    mha__attn_pf pf = {.row = -1};
    mha__attn_pf_add(&pf, &c, 1, 2, 1, 4, 40); /* 3 rows of 160 bytes in a row: 480 bytes */
    mha__attn_pf_add(&pf, &s, 1, 1, 2, 4, 20); /* 2 rows of 80 bytes, 480 bytes apart */
    mha__attn_pf_add(&pf, &c, 0, 0, 3, 3, 40); /* no rows: no span */
    ASSERT_EQ(pf.nspan, 2);
    const char *want[16];
    int nw = 0;
    const char *c0 = (const char *)(buf + ((1 * 3 + 2) * 5 + 1) * 40);
    for (int o = 0; o < 480; o += 64) want[nw++] = c0 + o; /* 8 lines */
    for (int r = 2; r < 4; r++) {
        const char *r0 = (const char *)(buf + ((1 * 5 + r) * 3 + 1) * 40);
        want[nw++] = r0, want[nw++] = r0 + 64; /* 80 bytes: 2 lines */
    }
    mha__attn_pf walk = pf;
    int n = 0;
    while (walk.left > 0 || mha__attn_pf_next(&walk)) {
        ASSERT_TRUE(n < nw && walk.p == want[n]);
        walk.p += 64, walk.left--, n++;
    }
    ASSERT_EQ(n, nw);
    int steps = 0;
    for (mha__attn_pf t = pf;; steps++) { /* until a step asks for no line */
        const char *before = t.p;
        mha__attn_pf_step(&t);
        if (t.p == before) break;
    }
    ASSERT_EQ(steps, (nw + MHA__PF_STEP - 1) / MHA__PF_STEP);
    mha__attn_pf fl = pf;
    mha__attn_pf_flush(&fl);
    ASSERT_TRUE(fl.left == 0 && fl.span == fl.nspan && !mha__attn_pf_next(&fl));

    /* the fused forward of every table with and without a stream (over a large buffer, so
     * that the tile's product with V asks for lines all along): the same bits */
    enum {
        BR = 40,
        BC = 200,
        N = 64
    };
    float *A = fbuf(BR * N), *K = fbuf(BC * N), *V = fbuf(BC * N), *big = fbuf(1 << 20);
    for (int64_t t = 0; t < BR * N; t++) A[t] = frand();
    for (int64_t t = 0; t < BC * N; t++) K[t] = frand(), V[t] = frand();
    int64_t bs[4] = {1, 1, 1 << 14, 64};
    mha_tensor tb = mha_tensor_make(big, 4, bs);
    for (int isa = MHA_ISA_GENERIC; isa <= MHA_ISA_AVX512; isa++) {
        if (!mha_isa_supported((mha_isa)isa)) continue;
        const mha_kernels *kt = mha__kernels_for((mha_isa)isa);
        float *Kp = fbuf(kt->attn_fwd_bc * N), *P = fbuf(BR * kt->attn_fwd_bc);
        float *O[2], m[2][BR], l[2][BR];
        mha__attn_pf str = {.row = -1};
        mha__attn_pf_add(&str, &tb, 0, 0, 0, 1 << 14, 64);
        for (int w = 0; w < 2; w++) {
            O[w] = fbuf(BR * N);
            for (int r = 0; r < BR; r++) m[w][r] = -INFINITY, l[w][r] = 0;
            for (int64_t t = 0; t < BR * N; t++) O[w][t] = 0;
            for (int64_t c0 = 0; c0 < BC; c0 += kt->attn_fwd_bc) {
                const int64_t bc = BC - c0 < kt->attn_fwd_bc ? BC - c0 : kt->attn_fwd_bc;
                mha__attn_tile_mask mk = {.col_end = bc, .diag = 3 - c0, .pf = w ? &str : NULL};
                for (int64_t r0 = 0; r0 < BR; r0 += kt->attn_fwd_br) {
                    const int64_t br = BR - r0 < kt->attn_fwd_br ? BR - r0 : kt->attn_fwd_br;
                    mha__attn_tile_mask mr = mha__attn_tile_mask_rows(&mk, r0);
                    kt->attn_kpack(bc, N, K + c0 * N, N, Kp);
                    kt->attn_fwd(br, bc, N, N, 0.125f, A + r0 * N, N, Kp, V + c0 * N, N, &mr,
                                 m[w] + r0, l[w] + r0, O[w] + r0 * N, N, P, kt->attn_fwd_bc);
                }
            }
        }
        if (memcmp(O[0], O[1], sizeof(float) * BR * N) || memcmp(m[0], m[1], sizeof m[0]) ||
            memcmp(l[0], l[1], sizeof l[0]))
            FAILF("%s: attn_fwd with a stream of lines differs from without",
                  mha_isa_name((mha_isa)isa));
        if (isa != MHA_ISA_GENERIC && str.row == -1)
            FAILF("%s: attn_fwd asked for no line of its stream", mha_isa_name((mha_isa)isa));
        free(Kp), free(P), free(O[0]), free(O[1]);
    }
    free(A), free(K), free(V), free(big);
}

/* DROPOUT KEEP DECISIONS. The generic attn_dropout against the scheme's scalar definition
 * (mha__dropout_keep, with the same seed, offset and p), then every SIMD attn_dropout against
 * the generic one, bitwise, on random tiles: any br, bc (across the 64/128-key steps), i0 and
 * j0 (every j0 mod 4; counters whose low 32 bits wrap), bh past 2^32, thresholds 0, 1,
 * 2^32 - 1 and random; bytes outside the tile (sentinels) untouched. */
static uint64_t urand64(void) {
    uint64_t a = (uint64_t)(urand() * 4294967296.0), b = (uint64_t)(urand() * 4294967296.0);
    return a << 32 ^ b;
}

/* The split that the SIMD dropout kernels vectorize (philox.h): mha__philox4x32_fixed for the
 * fixed words, rounds 1 and 2 per g as its comment says, rounds 3 to 10 with the round keys of
 * mha__philox_round_keys, equal to mha__philox4x32 for any key and counter. */
TEST(philox_fixed_rounds) {
    for (int t = 0; t < 20000; t++) {
        uint64_t key = urand64();
        uint32_t g = (uint32_t)urand64(), c1 = (uint32_t)urand64(), c2 = (uint32_t)urand64();
        uint32_t c3 = (uint32_t)urand64(), rs[4], k[20], want[4];
        mha__philox4x32(key, g, c1, c2, c3, want);
        mha__philox4x32_fixed(key, c1, c2, c3, rs);
        mha__philox_round_keys(key, k);
        uint64_t p = (uint64_t)MHA__PHILOX_M0 * g;
        uint64_t q = (uint64_t)MHA__PHILOX_M1 * ((uint32_t)(p >> 32) ^ rs[0]);
        uint32_t w[4] = {(uint32_t)(q >> 32) ^ rs[1], (uint32_t)q, (uint32_t)p ^ rs[2], rs[3]};
        for (int r = 2; r < 10; r++) {
            uint64_t p0 = (uint64_t)MHA__PHILOX_M0 * w[0], p1 = (uint64_t)MHA__PHILOX_M1 * w[2];
            w[0] = (uint32_t)(p1 >> 32) ^ w[1] ^ k[2 * r], w[1] = (uint32_t)p1;
            w[2] = (uint32_t)(p0 >> 32) ^ w[3] ^ k[2 * r + 1], w[3] = (uint32_t)p0;
        }
        if (memcmp(w, want, sizeof w)) {
            FAILF("key %llx counter (%u, %u, %u, %u): got %08x %08x %08x %08x, expected %08x "
                  "%08x %08x %08x",
                  (unsigned long long)key, g, c1, c2, c3, w[0], w[1], w[2], w[3], want[0], want[1],
                  want[2], want[3]);
            return;
        }
    }
}

TEST(dropout_keep_every_isa) {
    const mha_kernels *gen = mha__kernels_for(MHA_ISA_GENERIC);
    enum {
        MAXR = 70,
        MAXC = 520,
        LDK = MAXC + 7
    };
    uint8_t *k1 = malloc((size_t)(MAXR * LDK)), *k2 = malloc((size_t)(MAXR * LDK));
    /* 1. generic == mha__dropout_keep */
    const float ps[5] = {0.1f, 0.5f, 0.9f, 1e-7f, 0.999f};
    int64_t checked = 0;
    for (int t = 0; t < 40; t++) {
        mha_attn_params p = mha_attn_params_default();
        p.dropout_p = ps[t % 5];
        p.seed = urand64();
        p.offset = t % 2 ? urand64() : (uint64_t)(urand() * 100);
        mha__attn_problem pr;
        memset(&pr, 0, sizeof pr);
        pr.dropout_p = p.dropout_p, pr.seed = p.seed, pr.offset = p.offset;
        pr.drop_thr = (uint64_t)ceil((double)p.dropout_p * 4294967296.0);
        int64_t bh = t % 3 ? (int64_t)(urand() * 64) : (int64_t)(urand64() >> 20);
        int64_t br = 1 + (int64_t)(urand() * 6), bc = 1 + (int64_t)(urand() * 300);
        int64_t i0 = t % 4 == 3 ? 4294967296ll - 2 : (int64_t)(urand() * 5000);
        int64_t j0 = (int64_t)(urand() * 5000);
        mha__attn_dropout dr = mha__attn_dropout_make(&pr, bh);
        memset(k1, 0xA5, (size_t)(MAXR * LDK));
        gen->attn_dropout(br, bc, &dr, i0, j0, k1, LDK);
        for (int64_t r = 0; r < br; r++)
            for (int64_t c = 0; c < LDK; c++) {
                int want = c < bc ? mha__dropout_keep(&p, bh, i0 + r, j0 + c) : 0xA5;
                if (k1[r * LDK + c] != want) {
                    FAILF("generic attn_dropout (p %g, bh %lld, i %lld, j %lld): got %d, "
                          "expected %d",
                          (double)p.dropout_p, (long long)bh, (long long)(i0 + r),
                          (long long)(j0 + c), k1[r * LDK + c], want);
                    free(k1), free(k2);
                    return;
                }
                checked += c < bc;
            }
    }
    printf("  generic: %lld keep decisions equal to mha__dropout_keep\n", (long long)checked);
    /* 2. every SIMD table == generic, bitwise */
    for (int i = 0; i < nisa; i++) {
        const mha_kernels *kk = isas[i];
        if (!kk->attn_dropout || !kk->attn_dropout_apply) {
            FAILF("%s: no attn_dropout / attn_dropout_apply (every table has them)", kk->name);
            continue;
        }
        if (kk == gen) continue;
        int64_t kept = 0, total = 0;
        for (int t = 0; t < 400; t++) {
            mha__attn_dropout dr;
            dr.key = urand64(), dr.bh = (uint32_t)urand64(), dr.ctr3 = (uint32_t)urand64();
            switch (t % 8) {
            case 0: dr.thr = 0; break;
            case 1: dr.thr = 1; break;
            case 2: dr.thr = 0xFFFFFFFFu; break;
            default: dr.thr = (uint32_t)urand64(); break;
            }
            int64_t br = 1 + (int64_t)(urand() * (t % 5 ? 4 : MAXR));
            int64_t bc = 1 + (int64_t)(urand() * (t % 3 ? MAXC : 70));
            int64_t i0 =
                t % 7 == 0 ? 4294967296ll - 1 - (int64_t)(urand() * 3) : (int64_t)(urand() * 1e6);
            /* j0: any residue mod 4; group counters j0 / 4 near and past 2^32 */
            int64_t j0 = t % 6 == 0 ? (4294967296ll - 40) * 4 + (int64_t)(urand() * 400)
                                    : (int64_t)(urand() * 1e6);
            memset(k1, 0xA5, (size_t)(MAXR * LDK));
            memset(k2, 0xA5, (size_t)(MAXR * LDK));
            kk->attn_dropout(br, bc, &dr, i0, j0, k1, LDK);
            gen->attn_dropout(br, bc, &dr, i0, j0, k2, LDK);
            if (memcmp(k1, k2, (size_t)(MAXR * LDK))) {
                int64_t x = 0;
                while (k1[x] == k2[x]) x++;
                FAILF("%s attn_dropout (br %lld, bc %lld, i0 %lld, j0 %lld, thr %u): byte "
                      "[%lld][%lld] got %d, generic %d",
                      kk->name, (long long)br, (long long)bc, (long long)i0, (long long)j0, dr.thr,
                      (long long)(x / LDK), (long long)(x % LDK), k1[x], k2[x]);
                break;
            }
            for (int64_t r = 0; r < br; r++)
                for (int64_t c = 0; c < bc; c++) kept += k1[r * LDK + c], total++;
        }
        printf("  %s attn_dropout: %lld decisions equal to the generic (%.3f kept)\n", kk->name,
               (long long)total, (double)kept / (double)total);
    }
    free(k1), free(k2);
}

/* attn_dropout_apply of every table bitwise equal to the generic one, in place and not, at
 * vector edges; dropped elements exactly 0 even when X is NaN or inf; pads untouched. */
TEST(dropout_apply_every_isa) {
    const mha_kernels *gen = mha__kernels_for(MHA_ISA_GENERIC);
    enum {
        R = 9,
        C = 150,
        LD = C + 5
    };
    float *X = fbuf(R * LD), *Y1 = fbuf(R * LD), *Y2 = fbuf(R * LD);
    uint8_t keep[R * LD];
    for (int64_t t = 0; t < R * LD; t++) {
        double u = urand();
        X[t] = u < 0.05 ? NAN : u < 0.1 ? INFINITY : frand();
        keep[t] = urand() < 0.6;
    }
    /* the generic one: the definition */
    for (int64_t t = 0; t < R * LD; t++) Y2[t] = SENTINEL;
    gen->attn_dropout_apply(R, C, keep, LD, 1.25f, X, LD, Y2, LD);
    for (int64_t r = 0; r < R; r++)
        for (int64_t c = 0; c < LD; c++) {
            float x = X[r * LD + c], y = Y2[r * LD + c];
            int good = c >= C             ? y == SENTINEL
                       : keep[r * LD + c] ? (isnan(x) ? isnan(y) : y == x * 1.25f)
                                          : (y == 0.0f && !signbit(y));
            if (!good) {
                FAILF("generic attn_dropout_apply [%lld][%lld]: x %g keep %d gave %g", (long long)r,
                      (long long)c, x, keep[r * LD + c], y);
                goto out;
            }
        }
    for (int i = 0; i < nisa; i++) {
        const mha_kernels *kk = isas[i];
        if (!kk->attn_dropout_apply) continue;
        const int64_t bcs[6] = {1, 7, 8, 17, 64, C};
        for (int b = 0; b < 6; b++)
            for (int inplace = 0; inplace < 2; inplace++) {
                for (int64_t t = 0; t < R * LD; t++) Y1[t] = Y2[t] = inplace ? X[t] : SENTINEL;
                const float *x1 = inplace ? Y1 : X, *x2 = inplace ? Y2 : X;
                kk->attn_dropout_apply(R - b, bcs[b], keep, LD, 1.25f, x1, LD, Y1, LD);
                gen->attn_dropout_apply(R - b, bcs[b], keep, LD, 1.25f, x2, LD, Y2, LD);
                if (memcmp(Y1, Y2, sizeof(float) * (size_t)(R * LD))) {
                    FAILF("%s attn_dropout_apply (bc %lld, in place %d) differs from the generic",
                          kk->name, (long long)bcs[b], inplace);
                    goto out;
                }
            }
    }
out:
    free(X), free(Y1), free(Y2);
}

TEST(dsoftmax_matches_generic) {
    const mha_kernels *gen = mha__kernels_for(MHA_ISA_GENERIC);
    for (int i = 0; i < nisa; i++) {
        const mha_kernels *kk = isas[i];
        int64_t BR = kk->attn_br, BC = kk->attn_bc, ld = BC + LD_PAD;
        float *P = fbuf(BR * ld), *d1 = fbuf(BR * ld), *d2 = fbuf(BR * ld), *G = fbuf(BR * ld);
        float dr[256];
        for (int64_t t = 0; t < BR * ld; t++)
            P[t] = (float)urand(), d1[t] = d2[t] = frand(), G[t] = (float)urand();
        for (int64_t r = 0; r < BR; r++) dr[r] = frand();
        int64_t bcs[4] = {1, 17, BC - 1, BC};
        for (int b = 0; b < 8; b++) { /* b >= 4: times the softcap's derivative G */
            kk->attn_dsoftmax(BR - b % 4, bcs[b % 4], P, ld, d1, ld, dr, 0.3f, b < 4 ? NULL : G);
            gen->attn_dsoftmax(BR - b % 4, bcs[b % 4], P, ld, d2, ld, dr, 0.3f, b < 4 ? NULL : G);
        }
        /* the same roundings as the generic: bitwise equal, pads untouched */
        if (memcmp(d1, d2, sizeof(float) * (size_t)(BR * ld)))
            FAILF("%s dsoftmax differs from the generic kernel", kk->name);
        free(P), free(d1), free(d2), free(G);
    }
}

/* exp(x) for x in [lo, hi] through a probs kernel (attn_probs or attn_probs_bf16) with lse = 0
 * and no mask (x - 0 is exact): 2^23 points in rows of attn_bc - 1 keys (so masked tails).
 * Returns the largest relative error where x >= rel_from (*wx: that x); below it (results in
 * the subnormal range) each must lie within tol relative plus the smallest subnormal. */
static double exp_sweep(const mha_kernels *kk, mha__attn_probs_fn probs, double lo, double hi,
                        double rel_from, double tol, double *wx) {
    int64_t br = kk->attn_br, bc = kk->attn_bc - 1, per = br * bc;
    float *X = fbuf(per), *Y = fbuf(per), lse[256] = {0};
    mha__attn_tile_mask mk = {.col_end = bc, .diag = MHA__ATTN_NO_DIAG, .ld_mask = 0};
    const int64_t total = (int64_t)1 << 23;
    double worst = 0;
    *wx = 0;
    for (int64_t base = 0; base < total; base += per) {
        for (int64_t j = 0; j < per; j++)
            X[j] = Y[j] = (float)(lo + (hi - lo) * (double)(base + j) / (double)total);
        probs(br, bc, Y, bc, &mk, lse, NULL);
        for (int64_t j = 0; j < per; j++) {
            double w = exp((double)X[j]), e = fabs(Y[j] - w);
            if (X[j] >= rel_from) e /= w;
            else if (!(e <= tol * w + 0x1p-149)) FAILF("exp(%.9g): got %.9g", X[j], Y[j]);
            else e = 0;
            if (!(e <= worst)) worst = e, *wx = X[j];
        }
    }
    free(X), free(Y);
    return worst;
}

/* The special values of exp through probs: sy[n] in place (lse 0, no mask). */
static void exp_special(mha__attn_probs_fn probs, float *sy, int64_t n) {
    float lse[1] = {0};
    mha__attn_tile_mask mk = {.col_end = n, .diag = MHA__ATTN_NO_DIAG, .ld_mask = 0};
    probs(1, n, sy, n, &mk, lse, NULL);
}

/* The exp of the bf16 kernels' probabilities, through attn_probs_bf16: [-87, 0] within 8e-6
 * relative (1/250 of bfloat16's half-ulp: they are rounded to bf16 as product operands), down
 * to -150 within 8e-6 relative plus the smallest subnormal; exactly 1 at 0, +0 at -inf and
 * below -104, NaN stays NaN. Every table that has the entry (AVX512_BF16 CPUs). */
TEST(exp_prob_bf16) {
    for (int i = 0; i < nisa; i++) {
        const mha_kernels *kk = isas[i];
        if (!kk->attn_probs_bf16) continue;
        double wx, worst = exp_sweep(kk, kk->attn_probs_bf16, -150.0, 0.0, -87.0, 8e-6, &wx);
        printf("  %s exp_prob: max rel err %.3g over [-87, 0] (at %.9g)\n", kk->name, worst, wx);
        ASSERT_TRUE(worst <= 8e-6);
        float sy[8] = {0.0f, -0.0f, -INFINITY, NAN, -1e30f, -104.0f, -1.0f, -20.0f};
        exp_special(kk->attn_probs_bf16, sy, 8);
        ASSERT_TRUE(sy[0] == 1.0f && sy[1] == 1.0f);
        ASSERT_TRUE(sy[2] == 0.0f && !signbit(sy[2]) && sy[4] == 0.0f);
        ASSERT_TRUE(isnan(sy[3]));
        ASSERT_TRUE(sy[5] >= 0.0f && sy[5] < 1e-44f);
    }
}

/* exp as the kernels compute it: attn_probs with lse = 0 and no mask gives exp(S), by the
 * vectorized exp that a SIMD table's attn_probs and attn_fwd share. A dense sweep of [-88, 1]
 * (max relative error <= 1e-6) and special values: -inf and anything below -110 give exactly
 * +0, NaN stays NaN. */
TEST(exp_through_probs) {
    for (int i = 0; i < nisa; i++) {
        const mha_kernels *kk = isas[i];
        double wx, worst = exp_sweep(kk, kk->attn_probs, -88.0, 1.0, -88.0, 0, &wx);
        if (!(worst <= 1e-6)) FAILF("%s exp: max rel err %.3g at x = %.9g", kk->name, worst, wx);
        printf("  %s exp: max rel err %.3g over [-88, 1] (at x = %.9g)\n", kk->name, worst, wx);
        float sy[9] = {-INFINITY, -1e30f, -1000.0f, -110.0f, -104.0f, 0.0f, NAN, -0.0f, 1.0f};
        exp_special(kk->attn_probs, sy, 9);
        ASSERT_TRUE(sy[0] == 0.0f && !signbit(sy[0]));
        ASSERT_TRUE(sy[1] == 0.0f && sy[2] == 0.0f && sy[3] == 0.0f);
        ASSERT_TRUE(sy[4] >= 0.0f && sy[4] < 1e-44f);
        ASSERT_TRUE(sy[5] == 1.0f && sy[7] == 1.0f);
        ASSERT_TRUE(isnan(sy[6]));
        ASSERT_TRUE(fabs(sy[8] - exp(1.0)) <= 1e-6 * exp(1.0));
    }
}

/* The fused forward (with and without dropout) where its exp meets extremes, against float64
 * and the generic table: scores hundreds apart (exp underflows to subnormals and exactly 0),
 * float masks of -1e30, -inf, -100 and -88, running maxima far above the tile's scores, and a
 * NaN query row (its l and O must be NaN, as the generic's; the other rows unaffected). */
TEST(fused_forward_extremes) {
    const mha_kernels *gen = mha__kernels_for(MHA_ISA_GENERIC);
    enum {
        BR = 13,
        BC = 37,
        N = 16,
        NV = 24,
        LDM = BC + 3
    };
    const float fx[6] = {-1e30f, -INFINITY, -100.0f, -88.0f, 0.5f, 0.0f};
    fwd_case f = {.br = BR,
                  .bc = BC,
                  .n = N,
                  .nv = NV,
                  .lda = N + 1,
                  .ldk = N + 2,
                  .ldv = NV + 3,
                  .ldo = NV + 1,
                  .ldp = BC + 2};
    f.A = fbuf(BR * f.lda), f.K = fbuf(BC * f.ldk), f.V = fbuf(BC * f.ldv);
    f.O0 = fbuf(BR * f.ldo), f.m0 = fbuf(BR), f.l0 = fbuf(BR), f.P = fbuf(BR * f.ldp);
    f.Kp = aligned_alloc(64, sizeof(float) * 256 * N);
    float fm[BR * LDM];
    uint8_t keep[BR * LDM];
    for (int64_t r = 0; r < BR; r++)
        for (int64_t d = 0; d < N; d++) f.A[r * f.lda + d] = (r % 3 ? 1.0f : 40.0f) * frand();
    f.A[7 * f.lda + 3] = NAN; /* row 7 (with a finite running max): every score NaN */
    for (int64_t t = 0; t < BC * f.ldk; t++) f.K[t] = 2 * frand();
    for (int64_t t = 0; t < BC * f.ldv; t++) f.V[t] = frand();
    for (int64_t t = 0; t < BR * LDM; t++) {
        fm[t] = urand() < 0.4 ? fx[(int)(urand() * 6)] : frand();
        keep[t] = urand() < 0.7;
    }
    for (int64_t r = 0; r < BR; r++) {
        int fresh = r % 4 == 1;
        f.m0[r] = fresh ? -INFINITY : r % 4 == 2 ? 300.0f : frand();
        f.l0[r] = fresh ? 0.0f : 1.0f;
        for (int64_t x = 0; x < f.ldo; x++) f.O0[r * f.ldo + x] = fresh ? 0.0f : frand();
    }
    for (int i = 0; i < nisa; i++)
        for (int kind = 0; kind < 4; kind++) {
            mha__attn_tile_mask mk = {.col_end = BC,
                                      .diag = kind & 1 ? 2 : MHA__ATTN_NO_DIAG,
                                      .pad = NULL,
                                      .bmask = NULL,
                                      .fmask = kind & 2 ? fm : NULL,
                                      .ld_mask = LDM};
            f.keep = NULL;
            if (!check_fwd(isas[i], gen, &f, &mk, kind & 2 ? "extremes, float mask" : "extremes"))
                goto out;
            f.keep = keep, f.ldkeep = LDM;
            if (!check_fwd(isas[i], gen, &f, &mk, kind & 2 ? "extremes, float mask" : "extremes"))
                goto out;
        }
out:
    free(f.A), free(f.K), free(f.V), free(f.O0), free(f.m0), free(f.l0), free(f.P), free(f.Kp);
}

int main(void) {
    for (int isa = MHA_ISA_GENERIC; isa <= MHA_ISA_AVX512; isa++)
        if (mha_isa_supported((mha_isa)isa) && mha__kernels_for((mha_isa)isa))
            isas[nisa++] = mha__kernels_for((mha_isa)isa);
    RUN(products_every_edge);
    RUN(products_position_independent);
    RUN(softmax_probs_masks);
    RUN(fused_forward_masks_edges);
    RUN(fused_forward_driver_threads);
    RUN(fused_forward_driver_many_heads);
    RUN(prefetch_stream);
    RUN(philox_fixed_rounds);
    RUN(dropout_keep_every_isa);
    RUN(dropout_apply_every_isa);
    RUN(dsoftmax_matches_generic);
    RUN(exp_through_probs);
    RUN(exp_prob_bf16);
    RUN(fused_forward_extremes);
    return harness_report();
}
