/* attn.c - AVX-512 attention tile kernels (contracts: ATTENTION TILE KERNELS in kernels.h;
 * the generic versions in src/kernels/generic/attn.c are the reference).
 *
 * Products (register-blocked, broadcast + FMA, accumulators in zmm for the whole reduction):
 *   attn_scores  S[br,bc] = scale A[br,n] B[bc,n]^T: B is transposed per 128-deep chunk of n
 *                into a 64-column panel Kt[d][c] on the stack (16 x 16 in-register
 *                transposes), then blocks of 6 rows x 4 vectors (64 columns) run over d:
 *                4 panel loads + 6 broadcasts feed 24 FMAs. n > 128 keeps the partial sums
 *                in S between chunks (float, so the summation over d is the same sequence).
 *   attn_pv      O[br,n] = diag(alpha) O + P X: 6 rows x 64 columns of O in registers, loop
 *                over the bc keys (X row loads, P broadcasts).
 *   attn_ptv     G[bc,n] += P^T X: 6 keys x 64 columns of G in registers, loop over br rows.
 * Edges: a block with m < 6 rows repeats its last row in the registers of the missing ones
 * (never stored), the last vector of a panel is masked; so an element's arithmetic (an FMA
 * chain in index order) never depends on the tile shape or its position.
 * Probs, dsoftmax: one row at a time, 16 columns per step, masks as __mmask16,
 * exp by mha__vexp512 (vexp.h). */
#include "../../kernels.h"
#include "vexp.h"

#include <immintrin.h>
#include <math.h>

#define NVMAX 4            /* vectors per row of a register block */
#define PW (16 * NVMAX)    /* columns of a product panel */
#define MR 6               /* rows of a register block */
#define DC 128             /* depth of one packed B chunk: DC x PW floats = 32 KiB */
#define INL static inline __attribute__((always_inline))

INL __mmask16 tail_mask(int64_t w) {
    return w >= 16 ? (__mmask16)0xffff : w <= 0 ? (__mmask16)0 : (__mmask16)((1u << w) - 1);
}

/* In-place transpose of 16 rows of 16 floats. */
INL void transpose16(__m512 r[16]) {
    __m512 t[16], u[16];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) { /* u[4i + k] holds columns k, k+4, k+8, k+12 of rows 4i.. */
        u[4 * i + 0] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        u[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
        u[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        u[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
#pragma GCC unroll 2
    for (int h = 0; h < 2; h++) /* t[8h + k]: columns k, k+8 (k < 4) / k+4, k+12 of 8 rows */
#pragma GCC unroll 4
        for (int k = 0; k < 4; k++) {
            t[8 * h + k] = _mm512_shuffle_f32x4(u[8 * h + k], u[8 * h + 4 + k], 0x88);
            t[8 * h + 4 + k] = _mm512_shuffle_f32x4(u[8 * h + k], u[8 * h + 4 + k], 0xDD);
        }
#pragma GCC unroll 4
    for (int k = 0; k < 4; k++) {
        r[k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0x88);
        r[k + 8] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0xDD);
        r[k + 4] = _mm512_shuffle_f32x4(t[4 + k], t[12 + k], 0x88);
        r[k + 12] = _mm512_shuffle_f32x4(t[4 + k], t[12 + k], 0xDD);
    }
}

/* Kt[d*PW + c] = B[c*ldb + d] for d < dc, c < w (w <= PW); columns w .. 16*ceil(w/16) zero. */
static void pack_bt(const float *B, int64_t ldb, int64_t w, int64_t dc, float *Kt) {
    for (int64_t cb = 0; cb < w; cb += 16) {
        int64_t cw = w - cb < 16 ? w - cb : 16;
        for (int64_t db = 0; db < dc; db += 16) {
            int64_t dw = dc - db < 16 ? dc - db : 16;
            __mmask16 km = tail_mask(dw);
            __m512 r[16];
#pragma GCC unroll 16
            for (int i = 0; i < 16; i++)
                r[i] = i < cw ? _mm512_maskz_loadu_ps(km, B + (cb + i) * ldb + db)
                              : _mm512_setzero_ps();
            transpose16(r);
#pragma GCC unroll 16
            for (int i = 0; i < 16; i++)
                if (i < dw) _mm512_store_ps(Kt + (db + i) * PW + cb, r[i]);
        }
    }
}

/* S[m, 16 nv] (last vector masked by kl) = (first ? 0 : S) + A[m, dc] Kt[dc, 16 nv],
 * times scale when last. */
INL void scores_blk(const int nv, int64_t m, int64_t dc, const float *A, int64_t lda,
                    const float *Kt, float *S, int64_t lds, __mmask16 kl, float scale,
                    int first, int last) {
    const float *a[MR];
    __m512 acc[MR][NVMAX];
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++) {
        int64_t ri = i < m ? i : m - 1;
        a[i] = A + ri * lda;
#pragma GCC unroll 4
        for (int j = 0; j < nv; j++)
            acc[i][j] = first ? _mm512_setzero_ps()
                              : _mm512_maskz_loadu_ps(j == nv - 1 ? kl : 0xffff,
                                                      S + ri * lds + 16 * j);
    }
    for (int64_t d = 0; d < dc; d++) {
        __m512 b[NVMAX];
#pragma GCC unroll 4
        for (int j = 0; j < nv; j++) b[j] = _mm512_load_ps(Kt + d * PW + 16 * j);
#pragma GCC unroll 8
        for (int i = 0; i < MR; i++) {
            __m512 ai = _mm512_set1_ps(a[i][d]);
#pragma GCC unroll 4
            for (int j = 0; j < nv; j++) acc[i][j] = _mm512_fmadd_ps(ai, b[j], acc[i][j]);
        }
    }
    __m512 vs = _mm512_set1_ps(scale);
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++)
        if (i < m)
#pragma GCC unroll 4
            for (int j = 0; j < nv; j++)
                _mm512_mask_storeu_ps(S + i * lds + 16 * j, j == nv - 1 ? kl : 0xffff,
                                      last ? _mm512_mul_ps(vs, acc[i][j]) : acc[i][j]);
}

void mha__attn_scores_avx512(int64_t br, int64_t bc, int64_t n, float scale, const float *A,
                             int64_t lda, const float *B, int64_t ldb, float *S, int64_t lds) {
    if (n <= 0) {
        for (int64_t r = 0; r < br; r++)
            for (int64_t c = 0; c < bc; c++) S[r * lds + c] = 0.0f * scale;
        return;
    }
    float Kt[DC * PW] __attribute__((aligned(64)));
    for (int64_t c0 = 0; c0 < bc; c0 += PW) {
        int64_t w = bc - c0 < PW ? bc - c0 : PW;
        int nv = (int)((w + 15) / 16);
        __mmask16 kl = tail_mask(w - 16 * (nv - 1));
        for (int64_t d0 = 0; d0 < n; d0 += DC) {
            int64_t dc = n - d0 < DC ? n - d0 : DC;
            int first = d0 == 0, last = d0 + dc == n;
            pack_bt(B + c0 * ldb + d0, ldb, w, dc, Kt);
            for (int64_t r0 = 0; r0 < br; r0 += MR) {
                int64_t m = br - r0 < MR ? br - r0 : MR;
                const float *a = A + r0 * lda + d0;
                float *s = S + r0 * lds + c0;
                switch (nv) {
                case 1: scores_blk(1, m, dc, a, lda, Kt, s, lds, kl, scale, first, last); break;
                case 2: scores_blk(2, m, dc, a, lda, Kt, s, lds, kl, scale, first, last); break;
                case 3: scores_blk(3, m, dc, a, lda, Kt, s, lds, kl, scale, first, last); break;
                default: scores_blk(4, m, dc, a, lda, Kt, s, lds, kl, scale, first, last); break;
                }
            }
        }
    }
}

/* O[m, 16 nv] = diag(alpha) O + P[m, bc] X[bc, 16 nv]   (last vector masked by kl) */
INL void pv_blk(const int nv, int64_t m, int64_t bc, const float *P, int64_t ldp,
                const float *X, int64_t ldx, const float *alpha, float *O, int64_t ldo,
                __mmask16 kl) {
    const float *p[MR];
    __m512 acc[MR][NVMAX];
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++) {
        int64_t ri = i < m ? i : m - 1;
        p[i] = P + ri * ldp;
        __m512 va = _mm512_set1_ps(alpha ? alpha[ri] : 1.0f);
#pragma GCC unroll 4
        for (int j = 0; j < nv; j++)
            acc[i][j] = _mm512_mul_ps(
                va, _mm512_maskz_loadu_ps(j == nv - 1 ? kl : 0xffff, O + ri * ldo + 16 * j));
    }
    for (int64_t c = 0; c < bc; c++) {
        __m512 x[NVMAX];
#pragma GCC unroll 4
        for (int j = 0; j < nv; j++)
            x[j] = _mm512_maskz_loadu_ps(j == nv - 1 ? kl : 0xffff, X + c * ldx + 16 * j);
#pragma GCC unroll 8
        for (int i = 0; i < MR; i++) {
            __m512 pi = _mm512_set1_ps(p[i][c]);
#pragma GCC unroll 4
            for (int j = 0; j < nv; j++) acc[i][j] = _mm512_fmadd_ps(pi, x[j], acc[i][j]);
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++)
        if (i < m)
#pragma GCC unroll 4
            for (int j = 0; j < nv; j++)
                _mm512_mask_storeu_ps(O + i * ldo + 16 * j, j == nv - 1 ? kl : 0xffff,
                                      acc[i][j]);
}

void mha__attn_pv_avx512(int64_t br, int64_t bc, int64_t n, const float *P, int64_t ldp,
                         const float *X, int64_t ldx, const float *alpha, float *O,
                         int64_t ldo) {
    for (int64_t x0 = 0; x0 < n; x0 += PW) {
        int64_t w = n - x0 < PW ? n - x0 : PW;
        int nv = (int)((w + 15) / 16);
        __mmask16 kl = tail_mask(w - 16 * (nv - 1));
        for (int64_t r0 = 0; r0 < br; r0 += MR) {
            int64_t m = br - r0 < MR ? br - r0 : MR;
            const float *p = P + r0 * ldp, *x = X + x0;
            const float *al = alpha ? alpha + r0 : NULL;
            float *o = O + r0 * ldo + x0;
            switch (nv) {
            case 1: pv_blk(1, m, bc, p, ldp, x, ldx, al, o, ldo, kl); break;
            case 2: pv_blk(2, m, bc, p, ldp, x, ldx, al, o, ldo, kl); break;
            case 3: pv_blk(3, m, bc, p, ldp, x, ldx, al, o, ldo, kl); break;
            default: pv_blk(4, m, bc, p, ldp, x, ldx, al, o, ldo, kl); break;
            }
        }
    }
}

/* G[m, 16 nv] += P[br, m]^T X[br, 16 nv]   (m keys from column 0 of P; last vector masked) */
INL void ptv_blk(const int nv, int64_t m, int64_t br, const float *P, int64_t ldp,
                 const float *X, int64_t ldx, float *G, int64_t ldg, __mmask16 kl) {
    int64_t ci[MR];
    __m512 acc[MR][NVMAX];
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++) {
        ci[i] = i < m ? i : m - 1;
#pragma GCC unroll 4
        for (int j = 0; j < nv; j++)
            acc[i][j] = _mm512_maskz_loadu_ps(j == nv - 1 ? kl : 0xffff, G + ci[i] * ldg + 16 * j);
    }
    for (int64_t r = 0; r < br; r++) {
        __m512 x[NVMAX];
        const float *pr = P + r * ldp;
#pragma GCC unroll 4
        for (int j = 0; j < nv; j++)
            x[j] = _mm512_maskz_loadu_ps(j == nv - 1 ? kl : 0xffff, X + r * ldx + 16 * j);
#pragma GCC unroll 8
        for (int i = 0; i < MR; i++) {
            __m512 pi = _mm512_set1_ps(pr[ci[i]]);
#pragma GCC unroll 4
            for (int j = 0; j < nv; j++) acc[i][j] = _mm512_fmadd_ps(pi, x[j], acc[i][j]);
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++)
        if (i < m)
#pragma GCC unroll 4
            for (int j = 0; j < nv; j++)
                _mm512_mask_storeu_ps(G + i * ldg + 16 * j, j == nv - 1 ? kl : 0xffff,
                                      acc[i][j]);
}

void mha__attn_ptv_avx512(int64_t br, int64_t bc, int64_t n, const float *P, int64_t ldp,
                          const float *X, int64_t ldx, float *G, int64_t ldg) {
    for (int64_t x0 = 0; x0 < n; x0 += PW) {
        int64_t w = n - x0 < PW ? n - x0 : PW;
        int nv = (int)((w + 15) / 16);
        __mmask16 kl = tail_mask(w - 16 * (nv - 1));
        for (int64_t c0 = 0; c0 < bc; c0 += MR) {
            int64_t m = bc - c0 < MR ? bc - c0 : MR;
            const float *p = P + c0, *x = X + x0;
            float *g = G + c0 * ldg + x0;
            switch (nv) {
            case 1: ptv_blk(1, m, br, p, ldp, x, ldx, g, ldg, kl); break;
            case 2: ptv_blk(2, m, br, p, ldp, x, ldx, g, ldg, kl); break;
            case 3: ptv_blk(3, m, br, p, ldp, x, ldx, g, ldg, kl); break;
            default: ptv_blk(4, m, br, p, ldp, x, ldx, g, ldg, kl); break;
            }
        }
    }
}

/* The allowed keys among columns c .. c+15 of a row: inside [0, end) and the tile (end <=
 * bc), not key-padded, not bool-masked. */
INL __mmask16 allowed16(const mha__attn_tile_mask *mk, const uint8_t *bm, int64_t c,
                        int64_t end) {
    __mmask16 k = tail_mask(end - c);
    if (mk->pad) {
        __m128i v = _mm_maskz_loadu_epi8(k, mk->pad + c);
        k &= (__mmask16)~_mm_test_epi8_mask(v, v);
    }
    if (bm) {
        __m128i v = _mm_maskz_loadu_epi8(k, bm + c);
        k &= (__mmask16)~_mm_test_epi8_mask(v, v);
    }
    return k;
}

void mha__attn_probs_avx512(int64_t br, int64_t bc, float *S, int64_t lds,
                            const mha__attn_tile_mask *mk, const float *lse) {
    for (int64_t r = 0; r < br; r++) {
        float *s = S + r * lds;
        int64_t end = mha__attn_tile_row_end(mk, r, bc);
        const uint8_t *bm = mk->bmask ? mk->bmask + r * mk->ld_mask : NULL;
        const float *fm = mk->fmask ? mk->fmask + r * mk->ld_mask : NULL;
        if (lse[r] == -INFINITY) end = 0;
        __m512 vl = _mm512_set1_ps(lse[r]);
        for (int64_t c = 0; c < bc; c += 16) {
            __mmask16 kw = tail_mask(bc - c), ka = allowed16(mk, bm, c, end);
            __m512 x = _mm512_maskz_loadu_ps(ka, s + c);
            if (fm) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(ka, fm + c));
            __m512 p = _mm512_maskz_mov_ps(ka, mha__vexp512(_mm512_sub_ps(x, vl)));
            _mm512_mask_storeu_ps(s + c, kw, p);
        }
    }
}

void mha__attn_dsoftmax_avx512(int64_t br, int64_t bc, const float *P, int64_t ldp, float *dP,
                               int64_t ldd, const float *drow, float scale) {
    const __m512 vs = _mm512_set1_ps(scale);
    for (int64_t r = 0; r < br; r++) {
        const float *p = P + r * ldp;
        float *d = dP + r * ldd;
        __m512 vd = _mm512_set1_ps(drow[r]);
        for (int64_t c = 0; c < bc; c += 16) { /* scale * (p * (d - drow)), as the generic */
            __mmask16 kw = tail_mask(bc - c);
            __m512 t = _mm512_sub_ps(_mm512_maskz_loadu_ps(kw, d + c), vd);
            t = _mm512_mul_ps(_mm512_maskz_loadu_ps(kw, p + c), t);
            _mm512_mask_storeu_ps(d + c, kw, _mm512_mul_ps(vs, t));
        }
    }
}

/* FUSED FORWARD (attn_kpack / attn_fwd, contract in kernels.h)
 *
 * Packed key tile: panels of PW keys, panel t at Kp + t*PW*n, Kp[t*PW*n + d*PW + c] =
 * K[t*PW + c][d]; in the last panel the keys past bc (up to the next 16) are zero.
 * attn_fwd walks the query rows by blocks of MR: the block's scores go panel by panel
 * through zmm accumulators (scaled, masked, stored to P) while the row maxima are taken from
 * the registers; then one pass exp(s - m') with vector row sums, alpha for the whole block by
 * one vector exp, and O = diag(alpha) O + P V (pv_blk) while the block's P rows are in L1.
 * Keys past the block's last allowed key (causality, key_lengths) are never computed. */
void mha__attn_kpack_avx512(int64_t bc, int64_t n, const float *B, int64_t ldb, float *Kp) {
    for (int64_t c0 = 0; c0 < bc; c0 += PW)
        pack_bt(B + c0 * ldb, ldb, bc - c0 < PW ? bc - c0 : PW, n, Kp + c0 * n);
}

/* P[i, c0 .. c0 + 16 nv) (last vector kl) = scale * A[i] Kt (an FMA chain over d in order),
 * then + fmask, excluded keys -inf; vmx[i] = max(vmx[i], those). Block rows i < m are rows
 * r0 + i of the tile. */
INL void fwd_panel(const int nv, int64_t m, int64_t n, const float *A, int64_t lda,
                   const float *Kt, float scale, float *P, int64_t ldp, __mmask16 kl,
                   const mha__attn_tile_mask *mk, int masked, int64_t r0, int64_t c0,
                   int64_t bc, __m512 vmx[MR]) {
    const float *a[MR];
    __m512 acc[MR][NVMAX];
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++) {
        a[i] = A + (i < m ? i : m - 1) * lda;
#pragma GCC unroll 4
        for (int j = 0; j < nv; j++) acc[i][j] = _mm512_setzero_ps();
    }
    for (int64_t d = 0; d < n; d++) {
        __m512 b[NVMAX];
#pragma GCC unroll 4
        for (int j = 0; j < nv; j++) b[j] = _mm512_load_ps(Kt + d * PW + 16 * j);
#pragma GCC unroll 8
        for (int i = 0; i < MR; i++) {
            __m512 ai = _mm512_set1_ps(a[i][d]);
#pragma GCC unroll 4
            for (int j = 0; j < nv; j++) acc[i][j] = _mm512_fmadd_ps(ai, b[j], acc[i][j]);
        }
    }
    const __m512 vs = _mm512_set1_ps(scale), ninf = _mm512_set1_ps(-INFINITY);
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++) {
        if (i >= m) continue;
        int64_t end = bc;
        const uint8_t *bm = NULL;
        const float *fm = NULL;
        if (masked) {
            end = mha__attn_tile_row_end(mk, r0 + i, bc);
            if (mk->bmask) bm = mk->bmask + (r0 + i) * mk->ld_mask;
            if (mk->fmask) fm = mk->fmask + (r0 + i) * mk->ld_mask;
        }
#pragma GCC unroll 4
        for (int j = 0; j < nv; j++) {
            int64_t c = c0 + 16 * j;
            __m512 x = _mm512_mul_ps(vs, acc[i][j]);
            __mmask16 ka = j == nv - 1 ? kl : (__mmask16)0xffff;
            if (masked) {
                ka &= allowed16(mk, bm, c, end);
                if (fm) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(ka, fm + c));
            }
            x = _mm512_mask_mov_ps(ninf, ka, x);
            _mm512_mask_storeu_ps(P + i * ldp + c, j == nv - 1 ? kl : (__mmask16)0xffff, x);
            vmx[i] = _mm512_max_ps(x, vmx[i]); /* NaN x: keeps vmx, as the scalar x > mx */
        }
    }
}

/* attn_fwd (keep NULL) and attn_fwd_drop: the exp pass sums every probability into l and
 * stores the dropped ones as 0 for the product with V. */
INL void fwd_tile(int64_t br, int64_t bc, int64_t n, int64_t nv, float scale, const float *A,
                  int64_t lda, const float *Kp, const float *V, int64_t ldv,
                  const mha__attn_tile_mask *mk, float *m, float *l, float *O, int64_t ldo,
                  float *P, int64_t ldp, const uint8_t *keep, int64_t ldk) {
    const int any_mask = mk->pad || mk->bmask || mk->fmask;
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    for (int64_t r0 = 0; r0 < br; r0 += MR) {
        int64_t rows = br - r0 < MR ? br - r0 : MR;
        /* the row end is non-decreasing in r: keys >= bce are excluded for every row here */
        int64_t bce = mha__attn_tile_row_end(mk, r0 + rows - 1, bc);
        if (bce == 0) continue; /* nothing allowed: m, l, O unchanged */
        int masked = any_mask || mha__attn_tile_row_end(mk, r0, bc) < bce;
        float *p = P + r0 * ldp;
        const float *a = A + r0 * lda;
        __m512 vmx[MR];
        for (int i = 0; i < MR; i++) vmx[i] = ninf;
        for (int64_t c0 = 0; c0 < bce; c0 += PW) {
            int64_t w = bce - c0 < PW ? bce - c0 : PW;
            int nvk = (int)((w + 15) / 16);
            __mmask16 kl = tail_mask(w - 16 * (nvk - 1));
            const float *kt = Kp + c0 * n;
            switch (nvk) {
            case 1: fwd_panel(1, rows, n, a, lda, kt, scale, p, ldp, kl, mk, masked, r0, c0, bc, vmx); break;
            case 2: fwd_panel(2, rows, n, a, lda, kt, scale, p, ldp, kl, mk, masked, r0, c0, bc, vmx); break;
            case 3: fwd_panel(3, rows, n, a, lda, kt, scale, p, ldp, kl, mk, masked, r0, c0, bc, vmx); break;
            default: fwd_panel(4, rows, n, a, lda, kt, scale, p, ldp, kl, mk, masked, r0, c0, bc, vmx); break;
            }
        }
        /* m' per row from the registers; alpha = exp(m - m') for the block by one vector exp */
        float mo[16] __attribute__((aligned(64))) = {0}, mn[16] __attribute__((aligned(64))) = {0};
        float al[16] __attribute__((aligned(64)));
        for (int64_t i = 0; i < rows; i++) {
            float mx = _mm512_reduce_max_ps(vmx[i]);
            mo[i] = m[r0 + i];
            mn[i] = mx > mo[i] ? mx : mo[i];
        }
        _mm512_store_ps(al, mha__vexp512(_mm512_sub_ps(_mm512_load_ps(mo), _mm512_load_ps(mn))));
        for (int64_t i = 0; i < rows; i++) {
            float *pr = p + i * ldp;
            if (mn[i] == -INFINITY) { /* no allowed finite score yet: P = 0, alpha = 1 */
                for (int64_t c = 0; c < bce; c += 16)
                    _mm512_mask_storeu_ps(pr + c, tail_mask(bce - c), _mm512_setzero_ps());
                al[i] = 1;
                continue;
            }
            __m512 vm = _mm512_set1_ps(mn[i]), vsum = _mm512_setzero_ps();
            for (int64_t c = 0; c < bce; c += 16) {
                __mmask16 kw = tail_mask(bce - c);
                __m512 e = mha__vexp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(kw, pr + c), vm));
                vsum = _mm512_mask_add_ps(vsum, kw, vsum, e);
                if (keep) { /* dropped keys: exactly 0 in the product with V */
                    __m128i kb = _mm_maskz_loadu_epi8(kw, keep + (r0 + i) * ldk + c);
                    e = _mm512_maskz_mov_ps(_mm_test_epi8_mask(kb, kb), e);
                }
                _mm512_mask_storeu_ps(pr + c, kw, e);
            }
            l[r0 + i] = al[i] * l[r0 + i] + _mm512_reduce_add_ps(vsum);
            m[r0 + i] = mn[i];
        }
        /* O = diag(alpha) O + P[rows, bce] V[bce, nv] */
        for (int64_t x0 = 0; x0 < nv; x0 += PW) {
            int64_t w = nv - x0 < PW ? nv - x0 : PW;
            int nvo = (int)((w + 15) / 16);
            __mmask16 kl = tail_mask(w - 16 * (nvo - 1));
            float *o = O + r0 * ldo + x0;
            switch (nvo) {
            case 1: pv_blk(1, rows, bce, p, ldp, V + x0, ldv, al, o, ldo, kl); break;
            case 2: pv_blk(2, rows, bce, p, ldp, V + x0, ldv, al, o, ldo, kl); break;
            case 3: pv_blk(3, rows, bce, p, ldp, V + x0, ldv, al, o, ldo, kl); break;
            default: pv_blk(4, rows, bce, p, ldp, V + x0, ldv, al, o, ldo, kl); break;
            }
        }
    }
}

void mha__attn_fwd_avx512(int64_t br, int64_t bc, int64_t n, int64_t nv, float scale,
                          const float *A, int64_t lda, const float *Kp, const float *V,
                          int64_t ldv, const mha__attn_tile_mask *mk, float *m, float *l,
                          float *O, int64_t ldo, float *P, int64_t ldp) {
    fwd_tile(br, bc, n, nv, scale, A, lda, Kp, V, ldv, mk, m, l, O, ldo, P, ldp, NULL, 0);
}

void mha__attn_fwd_drop_avx512(int64_t br, int64_t bc, int64_t n, int64_t nv, float scale,
                               const float *A, int64_t lda, const float *Kp, const float *V,
                               int64_t ldv, const mha__attn_tile_mask *mk, float *m, float *l,
                               float *O, int64_t ldo, float *P, int64_t ldp,
                               const uint8_t *keep, int64_t ldk) {
    fwd_tile(br, bc, n, nv, scale, A, lda, Kp, V, ldv, mk, m, l, O, ldo, P, ldp, keep, ldk);
}

/* DROPOUT KEEP DECISIONS (attn_dropout, contract in kernels.h): one Philox-4x32-10 per 64-bit
 * lane, 8 groups of 4 keys per zmm, 4 zmm (32 groups, 128 keys) per step. A lane keeps its
 * 32-bit words in the low half (the high half is don't-care): _mm512_mul_epu32 reads only the
 * low halves and gives the full 64-bit product, so a round is 2 multiplies, 2 shifts (the
 * high words) and 2 three-way xors (ternary logic); the low product words are the products
 * themselves. Lane q of vector v holds group 8v + (q/2) + 4(q%2), so that after interleaving
 * (w0 | w1 << 32) and (w2 | w3 << 32) by 64-bit unpacks, one compare gives the 16 keep bits of
 * groups 8v..8v+3 in key order, and the next those of 8v+4..8v+7. */
#define PH_M0 0xD2511F53u
#define PH_M1 0xCD9E8D57u
#define PH_W0 0x9E3779B9u
#define PH_W1 0xBB67AE85u
#define DROP_STEP 128 /* keys per step */

/* The parts of Philox rounds 1 and 2 that depend only on the row (counter words 1 to 3, the
 * key), not on the group counter: rs[0] = ctr3 ^ k1 (round 1), rs[1] = lo(M1 bh) ^ k0' and
 * rs[2] = hi(M0 n0) ^ k1' (round 2), rs[3] = lo(M0 n0) with n0 = hi(M1 bh) ^ i ^ k0. */
static void philox_row(const mha__attn_dropout *dr, uint32_t i, uint32_t rs[4]) {
    uint32_t k0 = (uint32_t)dr->key, k1 = (uint32_t)(dr->key >> 32);
    uint64_t p1 = (uint64_t)PH_M1 * dr->bh;
    uint32_t n0 = (uint32_t)(p1 >> 32) ^ i ^ k0;
    uint64_t p0 = (uint64_t)PH_M0 * n0;
    rs[0] = dr->ctr3 ^ k1;
    rs[1] = (uint32_t)p1 ^ (k0 + PH_W0);
    rs[2] = (uint32_t)(p0 >> 32) ^ (k1 + PH_W1);
    rs[3] = (uint32_t)p0;
}

/* out[0 .. 128) = keep bytes of keys 4 g0 .. 4 g0 + 127 of a row (rs: philox_row), as 2
 * 64-byte vectors. */
INL void dropout_step(uint32_t g0, const uint32_t rs[4], const __m512i *rk, __m512i thr,
                      __m512i out[2]) {
    const __m512i m0 = _mm512_set1_epi64(PH_M0), m1 = _mm512_set1_epi64(PH_M1);
    const __m512i lane = _mm512_setr_epi64(0, 4, 1, 5, 2, 6, 3, 7);
    const __m512i r0 = _mm512_set1_epi64(rs[0]), r1 = _mm512_set1_epi64(rs[1]);
    const __m512i r2 = _mm512_set1_epi64(rs[2]), r3 = _mm512_set1_epi64(rs[3]);
    __m512i c0[4], c1[4], c2[4], c3[4];
#pragma GCC unroll 4
    for (int v = 0; v < 4; v++) {
        /* rounds 1 and 2: only the group counter's products are per lane */
        __m512i g = _mm512_add_epi64(_mm512_set1_epi64(g0 + 8u * (uint32_t)v), lane);
        __m512i p0 = _mm512_mul_epu32(g, m0); /* round 1 */
        __m512i t2 = _mm512_xor_si512(_mm512_srli_epi64(p0, 32), r0);
        __m512i p1 = _mm512_mul_epu32(t2, m1); /* round 2 */
        c0[v] = _mm512_xor_si512(_mm512_srli_epi64(p1, 32), r1);
        c1[v] = p1;
        c2[v] = _mm512_xor_si512(p0, r2);
        c3[v] = r3;
    }
#pragma GCC unroll 8
    for (int r = 2; r < 10; r++) {
#pragma GCC unroll 4
        for (int v = 0; v < 4; v++) {
            __m512i p0 = _mm512_mul_epu32(c0[v], m0), p1 = _mm512_mul_epu32(c2[v], m1);
            c0[v] = _mm512_ternarylogic_epi64(_mm512_srli_epi64(p1, 32), c1[v], rk[2 * r], 0x96);
            c2[v] = _mm512_ternarylogic_epi64(_mm512_srli_epi64(p0, 32), c3[v], rk[2 * r + 1],
                                              0x96);
            c1[v] = p1, c3[v] = p0;
        }
    }
    uint64_t bits[2] = {0, 0};
#pragma GCC unroll 4
    for (int v = 0; v < 4; v++) {
        __m512i x01 = _mm512_mask_blend_epi32(0xAAAA, c0[v], _mm512_slli_epi64(c1[v], 32));
        __m512i x23 = _mm512_mask_blend_epi32(0xAAAA, c2[v], _mm512_slli_epi64(c3[v], 32));
        uint64_t lo = _mm512_cmpge_epu32_mask(_mm512_unpacklo_epi64(x01, x23), thr);
        uint64_t hi = _mm512_cmpge_epu32_mask(_mm512_unpackhi_epi64(x01, x23), thr);
        bits[v / 2] |= (lo | hi << 16) << (32 * (v % 2));
    }
    const __m512i one = _mm512_set1_epi8(1);
    out[0] = _mm512_maskz_mov_epi8((__mmask64)bits[0], one);
    out[1] = _mm512_maskz_mov_epi8((__mmask64)bits[1], one);
}

INL __mmask64 bytes_mask(int64_t w) {
    return w >= 64 ? ~(__mmask64)0 : w <= 0 ? (__mmask64)0 : (((__mmask64)1 << w) - 1);
}

void mha__attn_dropout_avx512(int64_t br, int64_t bc, const mha__attn_dropout *dr, int64_t i0,
                              int64_t j0, uint8_t *keep, int64_t ldk) {
    if (br <= 0 || bc <= 0) return;
    __m512i rk[20]; /* round keys, broadcast */
    uint32_t k0 = (uint32_t)dr->key, k1 = (uint32_t)(dr->key >> 32);
    for (int r = 0; r < 10; r++, k0 += PH_W0, k1 += PH_W1)
        rk[2 * r] = _mm512_set1_epi64(k0), rk[2 * r + 1] = _mm512_set1_epi64(k1);
    const __m512i thr = _mm512_set1_epi32((int)dr->thr);
    const int64_t head = j0 & 3, total = head + bc; /* keys from the group-aligned j0 - head */
    for (int64_t r = 0; r < br; r++) {
        uint8_t *kr = keep + r * ldk;
        uint32_t rs[4];
        philox_row(dr, (uint32_t)(i0 + r), rs);
        for (int64_t s = 0; s < total; s += DROP_STEP) {
            __m512i out[2];
            dropout_step((uint32_t)((j0 >> 2) + s / 4), rs, rk, thr, out);
            if (head == 0) { /* keys s .. s+127 of the tile */
                _mm512_mask_storeu_epi8(kr + s, bytes_mask(total - s), out[0]);
                _mm512_mask_storeu_epi8(kr + s + 64, bytes_mask(total - s - 64), out[1]);
            } else { /* the first `head` bytes of the row belong to keys before j0 */
                uint8_t buf[DROP_STEP] __attribute__((aligned(64)));
                _mm512_store_si512(buf, out[0]);
                _mm512_store_si512(buf + 64, out[1]);
                int64_t a = s < head ? head : s, e = s + DROP_STEP < total ? s + DROP_STEP : total;
                for (int64_t t = a; t < e; t++) kr[t - head] = buf[t - s];
            }
        }
    }
}

void mha__attn_dropout_apply_avx512(int64_t br, int64_t bc, const uint8_t *keep, int64_t ldk,
                                    float ks, const float *X, int64_t ldx, float *Y,
                                    int64_t ldy) {
    const __m512 vk = _mm512_set1_ps(ks);
    for (int64_t r = 0; r < br; r++) {
        const uint8_t *kr = keep + r * ldk;
        const float *x = X + r * ldx;
        float *y = Y + r * ldy;
        for (int64_t c = 0; c < bc; c += 16) {
            __mmask16 kw = tail_mask(bc - c);
            __m128i kb = _mm_maskz_loadu_epi8(kw, kr + c);
            __mmask16 kk = _mm_test_epi8_mask(kb, kb);
            __m512 xv = _mm512_maskz_loadu_ps(kk, x + c); /* dropped: never read, 0 */
            _mm512_mask_storeu_ps(y + c, kw, _mm512_maskz_mul_ps(kk, xv, vk));
        }
    }
}
