/* attn_skel.h - the x86 attention tile kernels, written once over a SIMD mapping (ggml's
 * simd-mappings idea). Contracts: ATTENTION TILE KERNELS in ../kernels.h; the generic kernels
 * (../generic/attn.c) are the reference.
 *
 * Included by each ISA's attn.c after its mapping (<isa>/simd.h), which provides: the vector
 * types vf (VL floats), vmask (VL lanes) and vi (VL/2 64-bit lanes); the block sizes MR and
 * NVMAX; loads and stores (aligned, masked, "the last vector of a row"); fma, mul, add, sub,
 * max, exp, select, horizontal max and sum; the tail and allowed-key masks; the in-register
 * transpose; the keep-byte operations and the Philox lane operations. Here are the tile and
 * panel loops and the register blocks; every function below becomes mha__attn_<kind>_<isa>.
 * Where two ISAs compute the same thing in different forms (AVX2 and + add, AVX-512 a masked
 * add), the mapping keeps its own: results stay bitwise what each ISA gave before.
 *
 * PRODUCTS (register-blocked: broadcast + FMA, MR x NV vectors of accumulators in registers
 * for the whole reduction, NV <= NVMAX a compile-time constant per specialization):
 *   attn_scores  S[br,bc] = scale A[br,n] B[bc,n]^T. B is transposed per DC-deep chunk of n
 *                into a PW-column panel Kt[d][c] on the stack (VL x VL in-register
 *                transposes); blocks of MR rows x NV vectors then run over d: NV panel loads
 *                and MR broadcasts feed MR NV FMAs. n > DC keeps the partial sums in S
 *                between chunks (float, so the summation over d is one sequence).
 *   attn_pv      O[br,n] = diag(alpha) O + P X: MR rows x PW columns of O in registers, a
 *                loop over the bc keys (X row loads, P broadcasts).
 *   attn_ptv     G[bc,n] += P^T X: MR keys x PW columns of G in registers, a loop over rows.
 * Edges: a block with m < MR rows repeats its last row in the registers of the missing ones
 * (never stored); the last vector of a panel is masked, so nothing outside the tile is read
 * or written and an element's arithmetic (an FMA chain in index order) never depends on the
 * tile shape or its position.
 *
 * ROW KERNELS (probs, dsoftmax, dropout_apply): one row at a time, VL columns per step, the
 * last step masked.
 *
 * Speed: every mapping operation and register block is always_inline and the blocks are
 * compiled once per vector count (PER_NV), so each specialization is one loop of FMAs over
 * registers, as hand-written per ISA. A new ISA is a new <isa>/simd.h (every name above) and
 * a two-line attn.c; a new feature of the kernels is written here, once. */
#ifndef MHA_X86_ATTN_SKEL_H
#define MHA_X86_ATTN_SKEL_H

#include "../kernels.h"
#include "../philox.h"

#include <math.h>
#include <string.h>

#define PW (VL * NVMAX)    /* columns of a product panel */
#define DC 128             /* depth of one packed B chunk: DC x PW floats on the stack */
#define DROP_STEP (8 * VL) /* dropout keys per step: 4 vectors of VL/2 groups of 4 keys */

_Static_assert(MR <= VL, "a register block's row state (m, alpha) fits one vector");

#define SKEL_CAT_(a, b) a##b
#define SKEL_CAT(a, b) SKEL_CAT_(a, b)
#define KERNEL(kind) SKEL_CAT(mha__attn_##kind##_, SIMD_ISA) /* mha__attn_<kind>_<isa> */

/* BLOCK(k, args) for a compile-time k = n, 1 <= n <= 2, 4 or 8 (larger n: the largest), so that
 * a block's loops over k unroll fully and its accumulators stay in registers. A macro cannot
 * expand inside its own expansion: a dispatch nested in another needs a macro of its own
 * (decode_skel.h's PER_RB around PER_NV). */
#define PER_UPTO2(n, BLOCK, ...)                                                                   \
    do {                                                                                           \
        if ((n) == 1) BLOCK(1, __VA_ARGS__);                                                       \
        else BLOCK(2, __VA_ARGS__);                                                                \
    } while (0)
#define PER_UPTO4(n, BLOCK, ...)                                                                   \
    do {                                                                                           \
        switch (n) {                                                                               \
        case 1: BLOCK(1, __VA_ARGS__); break;                                                      \
        case 2: BLOCK(2, __VA_ARGS__); break;                                                      \
        case 3: BLOCK(3, __VA_ARGS__); break;                                                      \
        default: BLOCK(4, __VA_ARGS__); break;                                                     \
        }                                                                                          \
    } while (0)
#define PER_UPTO8(n, BLOCK, ...)                                                                   \
    do {                                                                                           \
        switch (n) {                                                                               \
        case 1: BLOCK(1, __VA_ARGS__); break;                                                      \
        case 2: BLOCK(2, __VA_ARGS__); break;                                                      \
        case 3: BLOCK(3, __VA_ARGS__); break;                                                      \
        case 4: BLOCK(4, __VA_ARGS__); break;                                                      \
        case 5: BLOCK(5, __VA_ARGS__); break;                                                      \
        case 6: BLOCK(6, __VA_ARGS__); break;                                                      \
        case 7: BLOCK(7, __VA_ARGS__); break;                                                      \
        default: BLOCK(8, __VA_ARGS__); break;                                                     \
        }                                                                                          \
    } while (0)
#define PER_UPTO_(m) PER_UPTO##m
#define PER_UPTO(m) PER_UPTO_(m)

/* BLOCK(nv, args): the register block specialized for a compile-time nv (1 <= nv <= NVMAX). */
#if NVMAX != 2 && NVMAX != 4
#error "attn_skel.h: NVMAX must be 2 or 4"
#endif
#define PER_NV PER_UPTO(NVMAX)

/* NV_FUNCS(name, (params), (args)) defines name_1 .. name_NVMAX: the register block name(nv,
 * args) for each nv in a function of its own, never inlined; PER_NV(nv, NV_CALL, name, args)
 * calls the one of nv. For the float32 score products (the fused forward's panels, attn_scores'
 * blocks) where the mapping says so (PANEL_OWN_FN): inlined into the tile loop, AVX-512's 24
 * accumulators got too few of the 32 registers beside the loop's live values, and the
 * accumulators the compiler kept on the stack bounded the loop by their store-to-load latency
 * (Zen 5: the forward 6-10% slower, the backward 5%). AVX2's 12 accumulators fit, and the call
 * cost it 3-5%; the fused forward's bf16 panel (vdpbf16ps) lost 2-3% by it too. */
#define SKEL_UNPAREN(...) __VA_ARGS__
#define NV_FUNC(v, name, params, args)                                                             \
    static __attribute__((noinline, unused)) void name##_##v params { name(v, SKEL_UNPAREN args); }
#if NVMAX == 4
#define NV_FUNCS(name, params, args)                                                               \
    NV_FUNC(1, name, params, args)                                                                 \
    NV_FUNC(2, name, params, args) NV_FUNC(3, name, params, args) NV_FUNC(4, name, params, args)
#else
#define NV_FUNCS(name, params, args) NV_FUNC(1, name, params, args) NV_FUNC(2, name, params, args)
#endif
#define NV_CALL(v, name, ...) name##_##v(__VA_ARGS__)
/* PER_NV for a score product: through its NV_FUNCS where the mapping says so */
#if PANEL_OWN_FN
#define PER_NV_SCORES(nv, name, ...) PER_NV(nv, NV_CALL, name, __VA_ARGS__)
#else
#define PER_NV_SCORES(nv, name, ...) PER_NV(nv, name, __VA_ARGS__)
#endif

/* Kt[d*PW + c] = B[c*ldb + d] for d < dc, c < w (w <= PW); columns w .. VL*ceil(w/VL) zero. */
static inline void pack_bt(const float *B, int64_t ldb, int64_t w, int64_t dc, float *Kt) {
    for (int64_t cb = 0; cb < w; cb += VL) {
        int64_t cw = w - cb < VL ? w - cb : VL;
        for (int64_t db = 0; db < dc; db += VL) {
            int64_t dw = dc - db < VL ? dc - db : VL;
            vmask km = mask_tail(dw);
            vf r[VL];
#pragma GCC unroll 16
            for (int i = 0; i < VL; i++)
                r[i] = i < cw ? vf_mload(B + (cb + i) * ldb + db, km) : vf_zero();
            vf_transpose(r);
#pragma GCC unroll 16
            for (int i = 0; i < VL; i++)
                if (i < dw) vf_store(Kt + (db + i) * PW + cb, r[i]);
        }
    }
}

/* SCORE TRANSFORMS (kernels.h: mha__attn_score_mod; the generic kernels use tanhf). */
static const float IOTA[16]
    __attribute__((aligned(64))) = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};

/* tanh(x): for |x| < 0.625 the odd polynomial x + x^3 P(x^2) (P of degree 4 fitted to tanh in
 * float64 on Chebyshev nodes of [0, 0.625]: relative error < 5e-9 before float rounding), else
 * sign(x) (1 - 2 / (exp(2|x|) + 1)) (no cancellation there: tanh >= 0.55; exp's clamp makes
 * large |x| exactly +-1). NaN propagates. */
INL vf vf_tanh(vf x) {
    const vf one = vf_set1(1.0f), zero = vf_zero();
    vf a = vf_abs(x), x2 = vf_mul(x, x);
    vf p = vf_set1(-0.005691985663198097f);
    p = vf_fma(p, x2, vf_set1(0.02062629182327361f));
    p = vf_fma(p, x2, vf_set1(-0.0537353188494469f));
    p = vf_fma(p, x2, vf_set1(0.13331381354360172f));
    p = vf_fma(p, x2, vf_set1(-0.3333327920837057f));
    vf small = vf_fma(vf_mul(x, x2), p, x);
    vf big = vf_sub(one, vf_div(vf_set1(2.0f), vf_add(vf_exp(vf_add(a, a)), one)));
    big = vf_select(vf_lt(x, zero), vf_sub(zero, big), big);
    return vf_select(vf_lt(a, vf_set1(0.625f)), small, big);
}

/* ALiBi on the scores of row r, keys c .. c + VL - 1: x - slope * |r + adiag - c'| (the
 * distance exact in float below 2^24; a product then a difference, as the scalar form). */
INL vf alibi_v(const mha__attn_tile_mask *mk, vf x, int64_t r, int64_t c) {
    vf d = vf_abs(vf_sub(vf_set1((float)(r + mk->adiag - c)), vf_load(IOTA)));
    return vf_sub(x, vf_mul(vf_set1(mk->slope), d));
}

/* The tile's transforms (softcap, then ALiBi) on the scaled scores x of row r, keys c ... */
INL vf score_mod(const mha__attn_tile_mask *mk, vf x, int64_t r, int64_t c) {
    if (mk->softcap > 0)
        x = vf_mul(vf_set1(mk->softcap), vf_tanh(vf_mul(x, vf_set1(1.0f / mk->softcap))));
    if (mk->slope != 0) x = alibi_v(mk, x, r, c);
    return x;
}

/* Keys c .. c + VL - 1 of a row allowed by the window's left bound (start: the row's). */
INL vmask window_lo(vmask k, const mha__attn_tile_mask *mk, int64_t c, int64_t start) {
    return mk->has_lo ? mask_andnot(k, mask_tail(start - c)) : k;
}

/* One step of a register block's reduction: acc[i][j] += a[i][k] x[j] (one FMA each) for
 * the MR rows and the nv vectors of x. */
INL void blk_fma(const int nv, vf acc[MR][NVMAX], const float *const a[MR], int64_t k,
                 const vf x[NVMAX]) {
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++) {
        vf ai = vf_bcast(a[i] + k);
#pragma GCC unroll 16
        for (int j = 0; j < nv; j++) acc[i][j] = vf_fma(ai, x[j], acc[i][j]);
    }
}

/* Rows i < m of a register block to C (ldc; the last vector of a row cut by kl). */
INL void blk_store(const int nv, int64_t m, vf acc[MR][NVMAX], float *C, int64_t ldc, vmask kl) {
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++)
        if (i < m)
#pragma GCC unroll 16
            for (int j = 0; j < nv; j++)
                vf_store_v(C + i * ldc + VL * j, j == nv - 1, kl, acc[i][j]);
}

/* S[m, VL nv] (last vector masked by kl) = (first ? 0 : S) + A[m, dc] Kt[dc, VL nv],
 * times scale when last. */
INL void scores_blk(const int nv, int64_t m, int64_t dc, const float *A, int64_t lda,
                    const float *Kt, float *S, int64_t lds, vmask kl, float scale, int first,
                    int last) {
    const float *a[MR];
    vf acc[MR][NVMAX];
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++) {
        int64_t ri = i < m ? i : m - 1;
        a[i] = A + ri * lda;
#pragma GCC unroll 16
        for (int j = 0; j < nv; j++)
            acc[i][j] = first ? vf_zero() : vf_load_v(S + ri * lds + VL * j, j == nv - 1, kl);
    }
    for (int64_t d = 0; d < dc; d++) {
        vf b[NVMAX];
#pragma GCC unroll 16
        for (int j = 0; j < nv; j++) b[j] = vf_load(Kt + d * PW + VL * j);
        blk_fma(nv, acc, a, d, b);
    }
    vf vs = vf_set1(scale);
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++)
        if (i < m)
#pragma GCC unroll 16
            for (int j = 0; j < nv; j++)
                vf_store_v(S + i * lds + VL * j, j == nv - 1, kl,
                           last ? vf_mul(vs, acc[i][j]) : acc[i][j]);
}
NV_FUNCS(scores_blk,
         (int64_t m, int64_t dc, const float *A, int64_t lda, const float *Kt, float *S,
          int64_t lds, vmask kl, float scale, int first, int last),
         (m, dc, A, lda, Kt, S, lds, kl, scale, first, last))

#ifndef SKEL_BF16_ONLY
/* attn_scores on B (packed here, a DC x PW panel at a time) or, Kp non-NULL, on the tile as
 * attn_kpack packed it (the same panels: Kp + c0 n + d0 PW is the one packed for (c0, d0)) */
INL void scores_run(int64_t br, int64_t bc, int64_t n, float scale, const float *A, int64_t lda,
                    const float *B, int64_t ldb, const float *Kp, float *S, int64_t lds) {
    if (n <= 0) {
        for (int64_t r = 0; r < br; r++)
            for (int64_t c = 0; c < bc; c++) S[r * lds + c] = 0.0f * scale;
        return;
    }
    float Kt[DC * PW] __attribute__((aligned(VALIGN)));
    for (int64_t c0 = 0; c0 < bc; c0 += PW) {
        int64_t w = bc - c0 < PW ? bc - c0 : PW;
        int nv = (int)((w + VL - 1) / VL);
        vmask kl = mask_tail(w - VL * (nv - 1));
        for (int64_t d0 = 0; d0 < n; d0 += DC) {
            int64_t dc = n - d0 < DC ? n - d0 : DC;
            int first = d0 == 0, last = d0 + dc == n;
            const float *kt = Kp ? Kp + c0 * n + d0 * PW : Kt;
            if (!Kp) pack_bt(B + c0 * ldb + d0, ldb, w, dc, Kt);
            for (int64_t r0 = 0; r0 < br; r0 += MR) {
                int64_t m = br - r0 < MR ? br - r0 : MR;
                const float *a = A + r0 * lda + d0;
                float *s = S + r0 * lds + c0;
                PER_NV_SCORES(nv, scores_blk, m, dc, a, lda, kt, s, lds, kl, scale, first, last);
            }
        }
    }
}

void KERNEL(scores)(int64_t br, int64_t bc, int64_t n, float scale, const float *A, int64_t lda,
                    const float *B, int64_t ldb, float *S, int64_t lds) {
    scores_run(br, bc, n, scale, A, lda, B, ldb, NULL, S, lds);
}

void KERNEL(scores_kp)(int64_t br, int64_t bc, int64_t n, float scale, const float *A, int64_t lda,
                       const float *Kp, float *S, int64_t lds) {
    scores_run(br, bc, n, scale, A, lda, NULL, 0, Kp, S, lds);
}
#endif

/* acc = diag(alpha) O, or O when alpha is NULL, for the rows of a register block of m rows (a
 * missing row repeats the last one, never stored; the last vector of a row cut by kl): the
 * start of a product that adds to O (pv_blk, pv_blk_bf16, ptv_blk). */
INL void blk_load_scaled(const int nv, int64_t m, const float *alpha, const float *O, int64_t ldo,
                         vmask kl, vf acc[MR][NVMAX]) {
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++) {
        const int64_t ri = i < m ? i : m - 1;
        const vf va = vf_set1(alpha ? alpha[ri] : 1.0f);
#pragma GCC unroll 16
        for (int j = 0; j < nv; j++) {
            acc[i][j] = vf_load_v(O + ri * ldo + VL * j, j == nv - 1, kl);
            if (alpha) acc[i][j] = vf_mul(va, acc[i][j]);
        }
    }
}

/* O[m, VL nv] = diag(alpha) O + P[m, bc] X[bc, VL nv]   (last vector masked by kl); a step
 * of the stream pf (NULL: none) per key */
INL void pv_blk(const int nv, int64_t m, int64_t bc, const float *P, int64_t ldp, const float *X,
                int64_t ldx, const float *alpha, float *O, int64_t ldo, vmask kl,
                mha__attn_pf *pf) {
    const float *p[MR];
    vf acc[MR][NVMAX];
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++) p[i] = P + (i < m ? i : m - 1) * ldp;
    blk_load_scaled(nv, m, alpha, O, ldo, kl, acc);
    for (int64_t c = 0; c < bc; c++) {
        vf x[NVMAX];
#pragma GCC unroll 16
        for (int j = 0; j < nv; j++) x[j] = vf_load_v(X + c * ldx + VL * j, j == nv - 1, kl);
        blk_fma(nv, acc, p, c, x);
        if (pf) mha__attn_pf_step(pf);
    }
    blk_store(nv, m, acc, O, ldo, kl);
}

#ifndef SKEL_BF16_ONLY
void KERNEL(pv)(int64_t br, int64_t bc, int64_t n, const float *P, int64_t ldp, const float *X,
                int64_t ldx, const float *alpha, float *O, int64_t ldo) {
    for (int64_t x0 = 0; x0 < n; x0 += PW) {
        int64_t w = n - x0 < PW ? n - x0 : PW;
        int nv = (int)((w + VL - 1) / VL);
        vmask kl = mask_tail(w - VL * (nv - 1));
        for (int64_t r0 = 0; r0 < br; r0 += MR) {
            int64_t m = br - r0 < MR ? br - r0 : MR;
            const float *p = P + r0 * ldp, *x = X + x0;
            const float *al = alpha ? alpha + r0 : NULL;
            float *o = O + r0 * ldo + x0;
            PER_NV(nv, pv_blk, m, bc, p, ldp, x, ldx, al, o, ldo, kl, NULL);
        }
    }
}
#endif

/* G[m, VL nv] += P[br, m]^T X[br, VL nv]   (m keys from column 0 of P; last vector masked) */
INL void ptv_blk(const int nv, int64_t m, int64_t br, const float *P, int64_t ldp, const float *X,
                 int64_t ldx, float *G, int64_t ldg, vmask kl) {
    int64_t ci[MR];
    vf acc[MR][NVMAX];
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++) ci[i] = i < m ? i : m - 1;
    blk_load_scaled(nv, m, NULL, G, ldg, kl, acc);
    for (int64_t r = 0; r < br; r++) {
        vf x[NVMAX];
        const float *pr = P + r * ldp;
#pragma GCC unroll 16
        for (int j = 0; j < nv; j++) x[j] = vf_load_v(X + r * ldx + VL * j, j == nv - 1, kl);
#pragma GCC unroll 16
        for (int i = 0; i < MR; i++) {
            vf pi = vf_bcast(pr + ci[i]);
#pragma GCC unroll 16
            for (int j = 0; j < nv; j++) acc[i][j] = vf_fma(pi, x[j], acc[i][j]);
        }
    }
    blk_store(nv, m, acc, G, ldg, kl);
}

#ifndef SKEL_BF16_ONLY
void KERNEL(ptv)(int64_t br, int64_t bc, int64_t n, const float *P, int64_t ldp, const float *X,
                 int64_t ldx, float *G, int64_t ldg) {
    for (int64_t x0 = 0; x0 < n; x0 += PW) {
        int64_t w = n - x0 < PW ? n - x0 : PW;
        int nv = (int)((w + VL - 1) / VL);
        vmask kl = mask_tail(w - VL * (nv - 1));
        for (int64_t c0 = 0; c0 < bc; c0 += MR) {
            int64_t m = bc - c0 < MR ? bc - c0 : MR;
            const float *p = P + c0, *x = X + x0;
            float *g = G + c0 * ldg + x0;
            PER_NV(nv, ptv_blk, m, br, p, ldp, x, ldx, g, ldg, kl);
        }
    }
}
#endif

/* S = exp(mod(S) + fmask - lse[r]) in place; excluded keys and rows with lse = -inf exactly 0
 * (vf_maskz after the exp: exp(-inf - lse) is never needed); dcap: the softcap's derivative.
 * lp (a compile-time constant, only with SKEL_BF16): the exp of probabilities rounded to bf16
 * afterwards (vf_exp_prob). */
INL void probs_tile(const int lp, int64_t br, int64_t bc, float *S, int64_t lds,
                    const mha__attn_tile_mask *mk, const float *lse, float *dcap) {
    const vf one = vf_set1(1.0f), vcap = vf_set1(mk->softcap);
    const vf vinv = vf_set1(mk->softcap > 0 ? 1.0f / mk->softcap : 0.0f);
    (void)lp;
    for (int64_t r = 0; r < br; r++) {
        float *s = S + r * lds;
        int64_t end = mha__attn_tile_row_end(mk, r, bc),
                start = mha__attn_tile_row_start(mk, r, bc);
        const uint8_t *bm = mk->bmask ? mk->bmask + r * mk->ld_mask : NULL;
        const float *fm = mk->fmask ? mk->fmask + r * mk->ld_mask : NULL;
        if (lse[r] == -INFINITY) end = 0;
        vf vl = vf_set1(lse[r]);
        /* a row without masks or score transforms: its whole vectors before end plainly */
        const int plain =
            !mk->pad && !bm && !fm && start == 0 && !(mk->softcap > 0) && mk->slope == 0;
        const int64_t cw = plain ? end / VL * VL : 0;
        for (int64_t c = 0; c < cw; c += VL) {
            vf x = vf_sub(vf_load_v(s + c, 0, mask_full()), vl);
#ifdef SKEL_BF16
            if (lp) {
                vf_store_v(s + c, 0, mask_full(), vf_exp_prob(x));
                continue;
            }
#endif
            vf_store_v(s + c, 0, mask_full(), vf_exp(x));
        }
        for (int64_t c = cw; c < bc; c += VL) {
            vmask kw = mask_tail(bc - c);
            vmask ka = window_lo(mask_allowed(mk, bm, c, end, bc), mk, c, start);
            vf x = vf_mload(s + c, kw);
            if (mk->softcap > 0) {
                vf t = vf_tanh(vf_mul(x, vinv));
                if (dcap) vf_mstore(dcap + r * lds + c, kw, vf_sub(one, vf_mul(t, t)));
                x = vf_mul(vcap, t);
            }
            if (mk->slope != 0) x = alibi_v(mk, x, r, c);
            if (fm) x = vf_add(x, vf_mload(fm + c, ka));
#ifdef SKEL_BF16
            if (lp) {
                vf_mstore(s + c, kw, vf_maskz(ka, vf_exp_prob(vf_sub(x, vl))));
                continue;
            }
#endif
            vf_mstore(s + c, kw, vf_maskz(ka, vf_exp(vf_sub(x, vl))));
        }
    }
}

#ifndef SKEL_BF16_ONLY
void KERNEL(probs)(int64_t br, int64_t bc, float *S, int64_t lds, const mha__attn_tile_mask *mk,
                   const float *lse, float *dcap) {
    probs_tile(0, br, bc, S, lds, mk, lse, dcap);
}
#endif

/* dP = scale * (P * (dP - drow[r])) in place: the generic kernel's three roundings (then
 * * G, G non-NULL). */
#ifndef SKEL_BF16_ONLY
void KERNEL(dsoftmax)(int64_t br, int64_t bc, const float *P, int64_t ldp, float *dP, int64_t ldd,
                      const float *drow, float scale, const float *G) {
    const vf vs = vf_set1(scale);
    for (int64_t r = 0; r < br; r++) {
        const float *p = P + r * ldp;
        float *d = dP + r * ldd;
        vf vd = vf_set1(drow[r]);
        for (int64_t c = 0; c < bc; c += VL) {
            vmask kw = mask_tail(bc - c);
            vf t = vf_sub(vf_mload(d + c, kw), vd);
            t = vf_mul(vs, vf_mul(vf_mload(p + c, kw), t));
            if (G) t = vf_mul(t, vf_mload(G + r * ldp + c, kw));
            vf_mstore(d + c, kw, t);
        }
    }
}
#endif

/* FUSED FORWARD (attn_kpack / attn_fwd / attn_fwd_drop, contract in kernels.h)
 *
 * Packed key tile: panels of PW keys, panel t at Kp + t*PW*n, Kp[t*PW*n + d*PW + c] =
 * K[t*PW + c][d]; in the last panel the keys past bc (up to the next VL) are zero.
 * attn_fwd walks the query rows by blocks of MR: the block's scores go panel by panel through
 * register accumulators (scaled, masked, stored to P) while the row maxima are taken from the
 * registers; then one pass exp(s - m') with vector row sums, alpha for the whole block by one
 * vector exp, and O = diag(alpha) O + P V (pv_blk) while the block's P rows are in L1. Keys
 * past the block's last allowed key (causality, key_lengths) are never computed. */
#ifndef SKEL_BF16_ONLY
void KERNEL(kpack)(int64_t bc, int64_t n, const float *B, int64_t ldb, float *Kp) {
    for (int64_t c0 = 0; c0 < bc; c0 += PW)
        pack_bt(B + c0 * ldb, ldb, bc - c0 < PW ? bc - c0 : PW, n, Kp + c0 * n);
}
#endif

/* P[i, c0 .. c0 + VL nv) (last vector kl) = scale * acc[i] (the sums of a panel's products),
 * transformed, + fmask, excluded keys -inf; vmx[i] = max(vmx[i], those). Block rows i < m are
 * rows r0 + i of the tile. */
INL void fwd_panel_out(const int nv, int64_t m, vf acc[MR][NVMAX], float scale, float *P,
                       int64_t ldp, vmask kl, const mha__attn_tile_mask *mk, int masked, int mods,
                       int64_t r0, int64_t c0, int64_t bc, vf vmx[MR]) {
    const vf vs = vf_set1(scale), ninf = vf_set1(-INFINITY);
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++) {
        if (i >= m) continue;
        int64_t end = bc, start = 0;
        const uint8_t *bm = NULL;
        const float *fm = NULL;
        if (masked) {
            end = mha__attn_tile_row_end(mk, r0 + i, bc);
            start = mha__attn_tile_row_start(mk, r0 + i, bc);
            if (mk->bmask) bm = mk->bmask + (r0 + i) * mk->ld_mask;
            if (mk->fmask) fm = mk->fmask + (r0 + i) * mk->ld_mask;
        }
#pragma GCC unroll 16
        for (int j = 0; j < nv; j++) {
            int64_t c = c0 + VL * j;
            vf x = vf_mul(vs, acc[i][j]);
            if (mods) x = score_mod(mk, x, r0 + i, c);
            vmask ka = j == nv - 1 ? kl : mask_full();
            if (masked) {
                ka = window_lo(mask_and(ka, mask_allowed(mk, bm, c, end, bc)), mk, c, start);
                if (fm) x = vf_add(x, vf_mload(fm + c, ka));
            }
            x = vf_select(ka, x, ninf);
            vf_store_v(P + i * ldp + c, j == nv - 1, kl, x);
            vmx[i] = vf_max(x, vmx[i]); /* NaN x: keeps vmx, as the scalar x > mx */
        }
    }
}

/* out[i] = A[i] Kt over d < n, an FMA chain in order, for the block's m rows (called through
 * panel_acc_<nv>, NV_FUNCS). */
INL void panel_acc(const int nv, int64_t m, int64_t n, const float *A, int64_t lda, const float *Kt,
                   vf out[MR][NVMAX]) {
    const float *a[MR];
    vf acc[MR][NVMAX];
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++) {
        a[i] = A + (i < m ? i : m - 1) * lda;
#pragma GCC unroll 16
        for (int j = 0; j < nv; j++) acc[i][j] = vf_zero();
    }
    for (int64_t d = 0; d < n; d++) {
        vf b[NVMAX];
#pragma GCC unroll 16
        for (int j = 0; j < nv; j++) b[j] = vf_load(Kt + d * PW + VL * j);
        blk_fma(nv, acc, a, d, b);
    }
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 16
        for (int j = 0; j < nv; j++) out[i][j] = acc[i][j];
}
NV_FUNCS(panel_acc,
         (int64_t m, int64_t n, const float *A, int64_t lda, const float *Kt, vf out[MR][NVMAX]),
         (m, n, A, lda, Kt, out))

/* The scores of a block's panel, A[i] Kt, into P by fwd_panel_out. */
INL void fwd_panel(const int nv, int64_t m, int64_t n, const float *A, int64_t lda, const float *Kt,
                   float scale, float *P, int64_t ldp, vmask kl, const mha__attn_tile_mask *mk,
                   int masked, int mods, int64_t r0, int64_t c0, int64_t bc, vf vmx[MR]) {
    vf acc[MR][NVMAX];
    PER_NV_SCORES(nv, panel_acc, m, n, A, lda, Kt, acc);
    fwd_panel_out(nv, m, acc, scale, P, ldp, kl, mk, masked, mods, r0, c0, bc, vmx);
}

#ifdef SKEL_BF16
/* acc[i][j] = A[i] Kt over np / 2 pairs of the head dim, from bf16 query rows A[i] and a bf16
 * panel Kt (pair p of key c at Kt[p*2*PW + 2c]): one vdpbf16ps per pair (kernels.h, BFLOAT16). */
INL void panel_acc_bf16(const int nv, int64_t m, int64_t np, const uint16_t *A, int64_t lda,
                        const uint16_t *Kt, vf acc[MR][NVMAX]) {
    const uint16_t *a[MR];
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++) {
        a[i] = A + (i < m ? i : m - 1) * lda;
#pragma GCC unroll 16
        for (int j = 0; j < nv; j++) acc[i][j] = vf_zero();
    }
    for (int64_t p = 0; p < np / 2; p++) {
        vb b[NVMAX];
#pragma GCC unroll 16
        for (int j = 0; j < nv; j++) b[j] = vb_load(Kt + p * 2 * PW + 2 * VL * j);
#pragma GCC unroll 16
        for (int i = 0; i < MR; i++) {
            vb ai = vb_bcast(a[i] + 2 * p);
#pragma GCC unroll 16
            for (int j = 0; j < nv; j++) acc[i][j] = vf_dot2(acc[i][j], ai, b[j]);
        }
    }
}

/* The fused forward's panel in bf16: the products by panel_acc_bf16, into P by fwd_panel_out. */
INL void fwd_panel_bf16(const int nv, int64_t m, int64_t np, const uint16_t *A, int64_t lda,
                        const uint16_t *Kt, float scale, float *P, int64_t ldp, vmask kl,
                        const mha__attn_tile_mask *mk, int masked, int mods, int64_t r0, int64_t c0,
                        int64_t bc, vf vmx[MR]) {
    vf acc[MR][NVMAX];
    panel_acc_bf16(nv, m, np, A, lda, Kt, acc);
    fwd_panel_out(nv, m, acc, scale, P, ldp, kl, mk, masked, mods, r0, c0, bc, vmx);
}

/* S[m, VL nv] = scale * A Kt (attn_scores_bf16's block) */
INL void scores_blk_bf16(const int nv, int64_t m, int64_t np, const uint16_t *A, int64_t lda,
                         const uint16_t *Kt, float scale, float *S, int64_t lds, vmask kl) {
    vf acc[MR][NVMAX];
    panel_acc_bf16(nv, m, np, A, lda, Kt, acc);
    const vf vs = vf_set1(scale);
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 16
        for (int j = 0; j < nv; j++) acc[i][j] = vf_mul(vs, acc[i][j]);
    blk_store(nv, m, acc, S, lds, kl);
}

/* O[m, VL nv] = (alpha ? diag(alpha) O : O) + sum over npair pairs q of P2 pairs times V2 pairs:
 * block row i's pair q at P2 + i * rstep + q * qstep (bf16 elements; a 32-bit pair), pair q of
 * column x at V2[q*ldv2 + 2x]. The pv_blk of bf16 (rows: query rows, pairs of keys) and, with
 * the roles of the strides swapped, its ptv_blk (rows: keys, pairs of query rows). */
INL void pv_blk_bf16(const int nv, int64_t m, int64_t npair, const uint16_t *P2, int64_t rstep,
                     int64_t qstep, const uint16_t *V2, int64_t ldv2, const float *alpha, float *O,
                     int64_t ldo, vmask kl, mha__attn_pf *pf) {
    const uint16_t *p[MR];
    vf acc[MR][NVMAX];
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++) p[i] = P2 + (i < m ? i : m - 1) * rstep;
    blk_load_scaled(nv, m, alpha, O, ldo, kl, acc);
    for (int64_t q = 0; q < npair; q++) {
        vb x[NVMAX];
#pragma GCC unroll 16
        for (int j = 0; j < nv; j++)
            x[j] = vb_mload(V2 + q * ldv2 + 2 * VL * j, j == nv - 1 ? kl : mask_full());
#pragma GCC unroll 16
        for (int i = 0; i < MR; i++) {
            vb pi = vb_bcast(p[i] + q * qstep);
#pragma GCC unroll 16
            for (int j = 0; j < nv; j++) acc[i][j] = vf_dot2(acc[i][j], pi, x[j]);
        }
        if (pf) mha__attn_pf_step(pf);
    }
    blk_store(nv, m, acc, O, ldo, kl);
}

/* Row pr's probabilities of keys [c0, c1) (c0 even) rounded to bf16 pairs, in place: pair t
 * (keys c0 + 2t, c0 + 2t + 1) to the 32 bits at pr + c0 + t (written before it is read again:
 * t <= 2t). An odd c1's last pair gets 0 for key c1. */
INL void probs_to_pairs(float *pr, int64_t c0, int64_t c1) {
    uint16_t *out = (uint16_t *)(pr + c0);
    for (int64_t c = c0; c < c1; c += 2 * VL) {
        vf lo = vf_mload(pr + c, mask_tail(c1 - c)),
           hi = vf_mload(pr + c + VL, mask_tail(c1 - c - VL));
        const int64_t np = (c1 - c + 1) / 2; /* pairs of this step */
        vb_mstore(out + (c - c0), mask_tail(np), vb_round2(lo, hi));
    }
}
#endif

/* The scores of a row block's panel of nvk vectors from key c0: float32 (A, Kp floats) or, bf
 * (a compile-time constant), bf16 (A, Kp bf16: kernels.h's packed layouts). */
INL void fwd_scores(const int bf, int nvk, int64_t rows, int64_t n, const void *A, int64_t lda,
                    const void *Kp, float scale, float *p, int64_t ldp, vmask kl,
                    const mha__attn_tile_mask *mk, int masked, int mods, int64_t r0, int64_t c0,
                    int64_t bc, vf vmx[MR]) {
#ifdef SKEL_BF16
    if (bf) {
        const int64_t np = (n + 1) / 2 * 2;
        PER_NV(nvk, fwd_panel_bf16, rows, np, (const uint16_t *)A + r0 * lda, lda,
               (const uint16_t *)Kp + c0 * np, scale, p, ldp, kl, mk, masked, mods, r0, c0, bc,
               vmx);
        return;
    }
#endif
    (void)bf;
    PER_NV(nvk, fwd_panel, rows, n, (const float *)A + r0 * lda, lda, (const float *)Kp + c0 * n,
           scale, p, ldp, kl, mk, masked, mods, r0, c0, bc, vmx);
}

/* O[rows, nv] = diag(al) O + P[rows, cps .. bce) V[cps .. bce, nv]: float32, or, bf, the
 * probabilities rounded to bf16 pairs (in place) times the bf16 pairs of V (kernels.h). */
INL void fwd_pv(const int bf, int64_t rows, int64_t cps, int64_t bce, int64_t nv, float *p,
                int64_t ldp, const void *V, int64_t ldv, const float *al, float *O, int64_t ldo,
                mha__attn_pf *pf) {
    (void)bf; /* (bf: fwd_tile's exp pass left P as bf16 pairs) */
    for (int64_t x0 = 0; x0 < nv; x0 += PW) {
        int64_t w = nv - x0 < PW ? nv - x0 : PW;
        int nvo = (int)((w + VL - 1) / VL);
        vmask kl = mask_tail(w - VL * (nvo - 1));
        float *o = O + ldo * 0 + x0;
#ifdef SKEL_BF16
        if (bf) {
            const uint16_t *v2 = (const uint16_t *)V + cps / 2 * 2 * nv + 2 * x0;
            PER_NV(nvo, pv_blk_bf16, rows, (bce - cps + 1) / 2, (const uint16_t *)(p + cps),
                   2 * ldp, 2, v2, 2 * nv, al, o, ldo, kl, pf);
            continue;
        }
#endif
        PER_NV(nvo, pv_blk, rows, bce - cps, p + cps, ldp, (const float *)V + cps * ldv + x0, ldv,
               al, o, ldo, kl, pf);
    }
}

/* attn_fwd (keep NULL) and attn_fwd_drop, and with bf their bf16 form (attn_fwd_bf16): the exp
 * pass sums every probability into l and stores the dropped ones as 0 for the product with V.
 * A, Kp, V: floats, or bf16 with bf (V then the packed pairs, ldv unused). */
INL void fwd_tile(const int bf, int64_t br, int64_t bc, int64_t n, int64_t nv, float scale,
                  const void *A, int64_t lda, const void *Kp, const void *V, int64_t ldv,
                  const mha__attn_tile_mask *mk, float *m, float *l, float *O, int64_t ldo,
                  float *P, int64_t ldp, const uint8_t *keep, int64_t ldk) {
    const int any_mask = mk->pad || mk->bmask || mk->fmask;
    const int mods = mk->softcap > 0 || mk->slope != 0;
    const vf ninf = vf_set1(-INFINITY);
    for (int64_t r0 = 0; r0 < br; r0 += MR) {
        int64_t rows = br - r0 < MR ? br - r0 : MR;
        /* the row end and start are non-decreasing in r: keys >= bce are excluded for every row
         * here, and so are keys before the panel cps of the first row's start */
        int64_t bce = mha__attn_tile_row_end(mk, r0 + rows - 1, bc);
        int64_t cps = mha__attn_tile_row_start(mk, r0, bc) / PW * PW;
        if (bce <= cps) continue; /* nothing allowed: m, l, O unchanged */
        int masked = any_mask || mha__attn_tile_row_end(mk, r0, bc) < bce ||
                     mha__attn_tile_row_start(mk, r0 + rows - 1, bc) > cps;
        float *p = P + r0 * ldp;
        vf vmx[MR];
        for (int i = 0; i < MR; i++) vmx[i] = ninf;
        for (int64_t c0 = cps; c0 < bce; c0 += PW) {
            int64_t w = bce - c0 < PW ? bce - c0 : PW;
            int nvk = (int)((w + VL - 1) / VL);
            vmask kl = mask_tail(w - VL * (nvk - 1));
            /* a panel every row of the block allows whole (on the causal diagonal, all but the
             * last) needs no masks */
            int pm = masked && (any_mask || mha__attn_tile_row_end(mk, r0, bc) < c0 + w ||
                                mha__attn_tile_row_start(mk, r0 + rows - 1, bc) > c0);
            fwd_scores(bf, nvk, rows, n, A, lda, Kp, scale, p, ldp, kl, mk, pm, mods, r0, c0, bc,
                       vmx);
        }
        /* m' per row from the registers; alpha = exp(m - m') for the block by one vector exp */
        float mo[VL] __attribute__((aligned(VALIGN))) = {0};
        float mn[VL] __attribute__((aligned(VALIGN))) = {0};
        float al[VL] __attribute__((aligned(VALIGN)));
        for (int64_t i = 0; i < rows; i++) {
            float mx = vf_hmax(vmx[i]);
            mo[i] = m[r0 + i];
            mn[i] = mx > mo[i] ? mx : mo[i];
        }
        vf_store(al, vf_exp(vf_sub(vf_load(mo), vf_load(mn))));
        for (int64_t i = 0; i < rows; i++) {
            float *pr = p + i * ldp;
            if (mn[i] == -INFINITY) { /* no allowed finite score yet: P = 0, alpha = 1 */
                for (int64_t c = cps; c < bce; c += VL)
                    vf_mstore(pr + c, mask_tail(bce - c), vf_zero());
                al[i] = 1;
                continue;
            }
            vf vm = vf_set1(mn[i]), vsum = vf_zero();
#ifdef SKEL_BF16
            if (bf) { /* P straight to bf16 pairs in place, as probs_to_pairs lays them out */
                uint16_t *pp = (uint16_t *)(pr + cps);
                const uint8_t *kr = keep ? keep + (r0 + i) * ldk : NULL;
                /* whole pairs of vectors without masks, then the cut pair */
                const int64_t cw = cps + (bce - cps) / (2 * VL) * (2 * VL);
                for (int64_t c = cps; c < cw; c += 2 * VL) {
                    vf e0 = vf_exp_prob(vf_sub(vf_load_v(pr + c, 0, mask_full()), vm));
                    vf e1 = vf_exp_prob(vf_sub(vf_load_v(pr + c + VL, 0, mask_full()), vm));
                    vsum = vf_add(vsum, vf_add(e0, e1));
                    if (kr) {
                        e0 = vf_keep(e0, kr, c, bce, mask_full());
                        e1 = vf_keep(e1, kr, c + VL, bce, mask_full());
                    }
                    vb_store(pp + (c - cps), vb_round2(e0, e1));
                }
                for (int64_t c = cw; c < bce; c += 2 * VL) { /* (at most one) */
                    const vmask k0 = mask_tail(bce - c), k1 = mask_tail(bce - c - VL);
                    vf e0 = vf_maskz(k0, vf_exp_prob(vf_sub(vf_mload(pr + c, k0), vm)));
                    vf e1 = vf_maskz(k1, vf_exp_prob(vf_sub(vf_mload(pr + c + VL, k1), vm)));
                    vsum = vf_add(vsum, vf_add(e0, e1));
                    if (kr) e0 = vf_keep(e0, kr, c, bce, k0), e1 = vf_keep(e1, kr, c + VL, bce, k1);
                    vb_mstore(pp + (c - cps), mask_tail((bce - c + 1) / 2), vb_round2(e0, e1));
                }
                l[r0 + i] = al[i] * l[r0 + i] + vf_hsum(vsum);
                m[r0 + i] = mn[i];
                continue;
            }
#endif
            /* whole vectors in a loop of their own (no mask to compute), then the cut one */
            const int64_t cw = cps + (bce - cps) / VL * VL;
            const uint8_t *kr = keep ? keep + (r0 + i) * ldk : NULL;
            for (int64_t c = cps; c < cw; c += VL) {
                vf e = vf_exp(vf_sub(vf_load_v(pr + c, 0, mask_full()), vm));
                vsum = vf_add(vsum, e);
                if (kr) e = vf_keep(e, kr, c, bce, mask_full()); /* dropped: 0 */
                vf_store_v(pr + c, 0, mask_full(), e);
            }
            if (cw < bce) {
                vmask kw = mask_tail(bce - cw);
                vf e = vf_exp(vf_sub(vf_load_v(pr + cw, 1, kw), vm));
                vsum = vf_add_tail(vsum, e, 1, kw);
                if (kr) e = vf_keep(e, kr, cw, bce, kw);
                vf_store_v(pr + cw, 1, kw, e);
            }
            l[r0 + i] = al[i] * l[r0 + i] + vf_hsum(vsum);
            m[r0 + i] = mn[i];
        }
        /* O = diag(alpha) O + P[rows, cps .. bce) V[cps .. bce, nv] */
        fwd_pv(bf, rows, cps, bce, nv, p, ldp, V, ldv, al, O + r0 * ldo, ldo, mk->pf);
    }
}

#ifndef SKEL_BF16_ONLY
void KERNEL(fwd)(int64_t br, int64_t bc, int64_t n, int64_t nv, float scale, const float *A,
                 int64_t lda, const float *Kp, const float *V, int64_t ldv,
                 const mha__attn_tile_mask *mk, float *m, float *l, float *O, int64_t ldo, float *P,
                 int64_t ldp) {
    fwd_tile(0, br, bc, n, nv, scale, A, lda, Kp, V, ldv, mk, m, l, O, ldo, P, ldp, NULL, 0);
}

void KERNEL(fwd_drop)(int64_t br, int64_t bc, int64_t n, int64_t nv, float scale, const float *A,
                      int64_t lda, const float *Kp, const float *V, int64_t ldv,
                      const mha__attn_tile_mask *mk, float *m, float *l, float *O, int64_t ldo,
                      float *P, int64_t ldp, const uint8_t *keep, int64_t ldk) {
    fwd_tile(0, br, bc, n, nv, scale, A, lda, Kp, V, ldv, mk, m, l, O, ldo, P, ldp, keep, ldk);
}
#endif

#ifdef SKEL_BF16
/* kernels.h: attn_kpack_bf16 (panels of PW keys, pairs of the head dim) */
void KERNEL(kpack_bf16)(int64_t bc, int64_t n, const uint16_t *B, int64_t ldb, uint16_t *Kp) {
    const int64_t np = (n + 1) / 2 * 2, ncols = (bc + VL - 1) / VL * VL;
    if (n % 2 == 0 && ldb % 2 == 0 && (uintptr_t)B % 4 == 0) {
        /* the pairs as 32-bit words: the float panels' transpose (pack_bt moves bits only) */
        for (int64_t c0 = 0; c0 < bc; c0 += PW)
            pack_bt((const float *)(const void *)(B + c0 * ldb), ldb / 2,
                    bc - c0 < PW ? bc - c0 : PW, n / 2, (float *)(void *)(Kp + c0 * np));
        return;
    }
    for (int64_t c0 = 0; c0 < ncols; c0 += PW) {
        uint16_t *panel = Kp + c0 * np;
        const int64_t w = ncols - c0 < PW ? ncols - c0 : PW;
        for (int64_t p = 0; p < np / 2; p++)
            for (int64_t c = 0; c < w; c++)
                for (int e = 0; e < 2; e++) {
                    const int64_t d = 2 * p + e, key = c0 + c;
                    panel[p * 2 * PW + 2 * c + e] = key < bc && d < n ? B[key * ldb + d] : 0;
                }
    }
}

/* kernels.h: attn_vpack_bf16 (pairs of keys) */
void KERNEL(vpack_bf16)(int64_t bc, int64_t nv, const uint16_t *V, int64_t ldv, uint16_t *Vp) {
    for (int64_t q = 0; q < (bc + 1) / 2; q++) {
        const uint16_t *a = V + 2 * q * ldv, *b = 2 * q + 1 < bc ? a + ldv : NULL;
        for (int64_t x = 0; x < nv; x += VL) {
            const vmask k = mask_tail(nv - x);
            vb_mstore(Vp + (q * nv + x) * 2, k, vb_pair_rows(a + x, b ? b + x : NULL, k));
        }
    }
}

void KERNEL(fwd_bf16)(int64_t br, int64_t bc, int64_t n, int64_t nv, float scale, const uint16_t *A,
                      int64_t lda, const uint16_t *Kp, const uint16_t *Vp,
                      const mha__attn_tile_mask *mk, float *m, float *l, float *O, int64_t ldo,
                      float *P, int64_t ldp, const uint8_t *keep, int64_t ldk) {
    fwd_tile(1, br, bc, n, nv, scale, A, lda, Kp, Vp, 0, mk, m, l, O, ldo, P, ldp, keep, ldk);
}

/* kernels.h: attn_probs_bf16 */
void KERNEL(probs_bf16)(int64_t br, int64_t bc, float *S, int64_t lds,
                        const mha__attn_tile_mask *mk, const float *lse, float *dcap) {
    probs_tile(1, br, bc, S, lds, mk, lse, dcap);
}

/* The bf16 backward's products (BFLOAT16 BACKWARD in kernels.h). */
void KERNEL(scores_bf16)(int64_t br, int64_t bc, int64_t n, float scale, const uint16_t *A,
                         int64_t lda, const uint16_t *Kp, float *S, int64_t lds) {
    const int64_t np = (n + 1) / 2 * 2;
    for (int64_t c0 = 0; c0 < bc; c0 += PW) {
        int64_t w = bc - c0 < PW ? bc - c0 : PW;
        int nv = (int)((w + VL - 1) / VL);
        vmask kl = mask_tail(w - VL * (nv - 1));
        for (int64_t r0 = 0; r0 < br; r0 += MR) {
            int64_t m = br - r0 < MR ? br - r0 : MR;
            PER_NV(nv, scores_blk_bf16, m, np, A + r0 * lda, lda, Kp + c0 * np, scale,
                   S + r0 * lds + c0, lds, kl);
        }
    }
}

void KERNEL(pairs_bf16)(int64_t br, int64_t bc, float *P, int64_t ldp) {
    for (int64_t r = 0; r < br; r++) probs_to_pairs(P + r * ldp, 0, bc);
}

void KERNEL(tpairs_bf16)(int64_t br, int64_t bc, const float *P, int64_t ldp, uint16_t *T,
                         int64_t ldt) {
    for (int64_t s = 0; s < (br + 1) / 2; s++) {
        const float *lo = P + 2 * s * ldp, *hi = lo + ldp;
        const int two = 2 * s + 1 < br;
        for (int64_t c = 0; c < bc; c += VL) {
            vmask k = mask_tail(bc - c);
            vb v = vb_zip2(vf_mload(lo + c, k), two ? vf_mload(hi + c, k) : vf_zero());
            vb_mstore(T + 2 * (s * ldt + c), k, v);
        }
    }
}

void KERNEL(pv_bf16)(int64_t br, int64_t bc, int64_t n, const float *P2, int64_t ldp,
                     const uint16_t *V2, float *O, int64_t ldo) {
    for (int64_t x0 = 0; x0 < n; x0 += PW) {
        int64_t w = n - x0 < PW ? n - x0 : PW;
        int nv = (int)((w + VL - 1) / VL);
        vmask kl = mask_tail(w - VL * (nv - 1));
        for (int64_t r0 = 0; r0 < br; r0 += MR) {
            int64_t m = br - r0 < MR ? br - r0 : MR;
            PER_NV(nv, pv_blk_bf16, m, (bc + 1) / 2, (const uint16_t *)(P2 + r0 * ldp), 2 * ldp, 2,
                   V2 + 2 * x0, 2 * n, NULL, O + r0 * ldo + x0, ldo, kl, NULL);
        }
    }
}

void KERNEL(ptv_bf16)(int64_t br, int64_t bc, int64_t n, const uint16_t *T, int64_t ldt,
                      const uint16_t *X2, float *G, int64_t ldg) {
    for (int64_t x0 = 0; x0 < n; x0 += PW) {
        int64_t w = n - x0 < PW ? n - x0 : PW;
        int nv = (int)((w + VL - 1) / VL);
        vmask kl = mask_tail(w - VL * (nv - 1));
        for (int64_t c0 = 0; c0 < bc; c0 += MR) {
            int64_t m = bc - c0 < MR ? bc - c0 : MR;
            PER_NV(nv, pv_blk_bf16, m, (br + 1) / 2, T + 2 * c0, 2, 2 * ldt, X2 + 2 * x0, 2 * n,
                   NULL, G + c0 * ldg + x0, ldg, kl, NULL);
        }
    }
}
#endif

/* DROPOUT KEEP DECISIONS (attn_dropout, contract in kernels.h): one Philox-4x32-10
 * (../philox.h) per 64-bit lane, its 32-bit words in the low half (vi_mul32 reads only the
 * low halves and gives the full 64-bit product), VL/2 groups of 4 keys per vector, 4 vectors
 * (DROP_STEP keys) per step. Rounds 1 and 2 depend on the group counter only through two
 * products (mha__philox4x32_fixed holds the rest, once per row); rounds 3 to 10 are 2
 * multiplies, 2 shifts and 2 three-way xors per lane. vi_keep_bytes turns the words into keep
 * bytes in key order (the lanes hold groups in the order that makes this cheap). */

/* out[0], out[1] = the keep bytes of keys 4 g0 .. 4 g0 + DROP_STEP - 1 of a row (rs: the
 * row's mha__philox4x32_fixed; rk: the round keys, broadcast). */
INL void dropout_step(uint32_t g0, const uint32_t rs[4], const vi *rk, vi thr, vi out[2]) {
    const vi m0 = vi_set1(MHA__PHILOX_M0), m1 = vi_set1(MHA__PHILOX_M1);
    const vi lane = vi_group_lanes();
    const vi r0 = vi_set1(rs[0]), r1 = vi_set1(rs[1]), r2 = vi_set1(rs[2]), r3 = vi_set1(rs[3]);
    vi c0[4], c1[4], c2[4], c3[4];
#pragma GCC unroll 4
    for (int v = 0; v < 4; v++) {
        vi g = vi_add(vi_set1(g0 + VL / 2 * (uint32_t)v), lane);
        vi p0 = vi_mul32(g, m0);                       /* round 1 */
        vi p1 = vi_mul32(vi_xor(vi_hi32(p0), r0), m1); /* round 2 */
        c0[v] = vi_xor(vi_hi32(p1), r1);
        c1[v] = p1;
        c2[v] = vi_xor(p0, r2);
        c3[v] = r3;
    }
#pragma GCC unroll 8
    for (int r = 2; r < 10; r++) {
#pragma GCC unroll 4
        for (int v = 0; v < 4; v++) {
            vi p0 = vi_mul32(c0[v], m0), p1 = vi_mul32(c2[v], m1);
            c0[v] = vi_xor3(vi_hi32(p1), c1[v], rk[2 * r]);
            c2[v] = vi_xor3(vi_hi32(p0), c3[v], rk[2 * r + 1]);
            c1[v] = p1, c3[v] = p0;
        }
    }
    vi_keep_bytes(c0, c1, c2, c3, thr, out);
}

#ifndef SKEL_BF16_ONLY
void KERNEL(dropout)(int64_t br, int64_t bc, const mha__attn_dropout *dr, int64_t i0, int64_t j0,
                     uint8_t *keep, int64_t ldk) {
    if (br <= 0 || bc <= 0) return;
    if (dr->thr == 0) { /* every word >= 0 */
        for (int64_t r = 0; r < br; r++) memset(keep + r * ldk, 1, (size_t)bc);
        return;
    }
    uint32_t k[20];
    vi rk[20]; /* round keys, broadcast */
    mha__philox_round_keys(dr->key, k);
    for (int t = 0; t < 20; t++) rk[t] = vi_set1(k[t]);
    const vi thr = vi_keep_thr(dr->thr);
    const int64_t head = j0 & 3, total = head + bc; /* keys from the group-aligned j0 - head */
    for (int64_t r = 0; r < br; r++) {
        uint8_t *kr = keep + r * ldk;
        uint32_t rs[4];
        mha__philox4x32_fixed(dr->key, (uint32_t)(i0 + r), dr->bh, dr->ctr3, rs);
        for (int64_t s = 0; s < total; s += DROP_STEP) {
            vi out[2];
            dropout_step((uint32_t)((j0 >> 2) + s / 4), rs, rk, thr, out);
            if (head == 0 && total - s >= DROP_STEP) {
                vi_storeu(kr + s, out[0]);
                vi_storeu(kr + s + DROP_STEP / 2, out[1]);
            } else { /* a partial step: only the bytes of keys in [j0, j0 + bc) */
                uint8_t buf[DROP_STEP] __attribute__((aligned(VALIGN)));
                vi_store(buf, out[0]);
                vi_store(buf + DROP_STEP / 2, out[1]);
                int64_t a = s < head ? head : s, e = s + DROP_STEP < total ? s + DROP_STEP : total;
                memcpy(kr + a - head, buf + a - s, (size_t)(e - a));
            }
        }
    }
}
#endif

/* Y = keep ? X * ks : 0 (exactly 0, even for a NaN X), in place when Y == X. */
#ifndef SKEL_BF16_ONLY
void KERNEL(dropout_apply)(int64_t br, int64_t bc, const uint8_t *keep, int64_t ldk, float ks,
                           const float *X, int64_t ldx, float *Y, int64_t ldy) {
    const vf vk = vf_set1(ks);
    for (int64_t r = 0; r < br; r++) {
        const uint8_t *kr = keep + r * ldk;
        const float *x = X + r * ldx;
        float *y = Y + r * ldy;
        for (int64_t c = 0; c < bc; c += VL) {
            vmask kw = mask_tail(bc - c);
            int last = bc - c < VL;
            vf_store_v(y + c, last, kw, vf_dropout_scale(x, kr, c, bc, last, kw, vk));
        }
    }
}
#endif

#endif
