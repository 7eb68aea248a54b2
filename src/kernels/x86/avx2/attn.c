/* attn.c - AVX2 + FMA attention tile kernels (contracts: ATTENTION TILE KERNELS in kernels.h;
 * the generic versions in src/kernels/generic/attn.c are the reference).
 *
 * The structure of ../avx512/attn.c with 8-float vectors and 16 registers:
 *   attn_scores  B transposed per 128-deep chunk of n into a 16-column panel Kt[d][c] on the
 *                stack (8 x 8 in-register transposes); blocks of 6 rows x 2 vectors run over
 *                d (12 accumulators, 2 panel loads + 6 broadcasts per step).
 *   attn_pv      6 rows x 16 columns of O in registers, loop over the bc keys.
 *   attn_ptv     6 keys x 16 columns of G in registers, loop over the br rows.
 * Edges: missing rows of a block repeat the last row (never stored); the last vector of a
 * panel uses vmaskmov loads and stores, so nothing outside the tile is read or written and an
 * element's arithmetic never depends on the tile shape or its position.
 * Probs, dsoftmax: one row at a time, 8 columns per step, exp by mha__vexp256. */
#include "../../kernels.h"
#include "vexp.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

#define NVMAX 2            /* vectors per row of a register block */
#define PW (8 * NVMAX)     /* columns of a product panel */
#define MR 6               /* rows of a register block */
#define DC 128             /* depth of one packed B chunk: DC x PW floats = 8 KiB */
#define INL static inline __attribute__((always_inline))

/* Lanes i < w set (w clamped to [0, 8]). */
INL __m256i tail_mask(int64_t w) {
    int wi = w >= 8 ? 8 : w <= 0 ? 0 : (int)w;
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(wi), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* In-place transpose of 8 rows of 8 floats. */
INL void transpose8(__m256 r[8]) {
    __m256 t[8], u[8];
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
#pragma GCC unroll 2
    for (int i = 0; i < 2; i++) { /* u[4i + k]: columns k, k+4 of rows 4i .. 4i+3 */
        u[4 * i + 0] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
        u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
#pragma GCC unroll 4
    for (int k = 0; k < 4; k++) {
        r[k] = _mm256_permute2f128_ps(u[k], u[4 + k], 0x20);
        r[k + 4] = _mm256_permute2f128_ps(u[k], u[4 + k], 0x31);
    }
}

/* Kt[d*PW + c] = B[c*ldb + d] for d < dc, c < w (w <= PW); columns w .. 8*ceil(w/8) zero. */
static void pack_bt(const float *B, int64_t ldb, int64_t w, int64_t dc, float *Kt) {
    for (int64_t cb = 0; cb < w; cb += 8) {
        int64_t cw = w - cb < 8 ? w - cb : 8;
        for (int64_t db = 0; db < dc; db += 8) {
            int64_t dw = dc - db < 8 ? dc - db : 8;
            __m256i km = tail_mask(dw);
            __m256 r[8];
#pragma GCC unroll 8
            for (int i = 0; i < 8; i++)
                r[i] = i < cw ? _mm256_maskload_ps(B + (cb + i) * ldb + db, km)
                              : _mm256_setzero_ps();
            transpose8(r);
#pragma GCC unroll 8
            for (int i = 0; i < 8; i++)
                if (i < dw) _mm256_store_ps(Kt + (db + i) * PW + cb, r[i]);
        }
    }
}

INL __m256 load_v(const float *p, int last, __m256i kl) {
    return last ? _mm256_maskload_ps(p, kl) : _mm256_loadu_ps(p);
}
INL void store_v(float *p, int last, __m256i kl, __m256 v) {
    if (last) _mm256_maskstore_ps(p, kl, v);
    else _mm256_storeu_ps(p, v);
}

/* S[m, 8 nv] (last vector masked by kl) = (first ? 0 : S) + A[m, dc] Kt[dc, 8 nv],
 * times scale when last. */
INL void scores_blk(const int nv, int64_t m, int64_t dc, const float *A, int64_t lda,
                    const float *Kt, float *S, int64_t lds, __m256i kl, float scale,
                    int first, int last) {
    const float *a[MR];
    __m256 acc[MR][NVMAX];
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++) {
        int64_t ri = i < m ? i : m - 1;
        a[i] = A + ri * lda;
#pragma GCC unroll 2
        for (int j = 0; j < nv; j++)
            acc[i][j] = first ? _mm256_setzero_ps() : load_v(S + ri * lds + 8 * j, j == nv - 1, kl);
    }
    for (int64_t d = 0; d < dc; d++) {
        __m256 b[NVMAX];
#pragma GCC unroll 2
        for (int j = 0; j < nv; j++) b[j] = _mm256_load_ps(Kt + d * PW + 8 * j);
#pragma GCC unroll 8
        for (int i = 0; i < MR; i++) {
            __m256 ai = _mm256_broadcast_ss(a[i] + d);
#pragma GCC unroll 2
            for (int j = 0; j < nv; j++) acc[i][j] = _mm256_fmadd_ps(ai, b[j], acc[i][j]);
        }
    }
    __m256 vs = _mm256_set1_ps(scale);
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++)
        if (i < m)
#pragma GCC unroll 2
            for (int j = 0; j < nv; j++)
                store_v(S + i * lds + 8 * j, j == nv - 1, kl,
                        last ? _mm256_mul_ps(vs, acc[i][j]) : acc[i][j]);
}

void mha__attn_scores_avx2(int64_t br, int64_t bc, int64_t n, float scale, const float *A,
                           int64_t lda, const float *B, int64_t ldb, float *S, int64_t lds) {
    if (n <= 0) {
        for (int64_t r = 0; r < br; r++)
            for (int64_t c = 0; c < bc; c++) S[r * lds + c] = 0.0f * scale;
        return;
    }
    float Kt[DC * PW] __attribute__((aligned(32)));
    for (int64_t c0 = 0; c0 < bc; c0 += PW) {
        int64_t w = bc - c0 < PW ? bc - c0 : PW;
        int nv = (int)((w + 7) / 8);
        __m256i kl = tail_mask(w - 8 * (nv - 1));
        for (int64_t d0 = 0; d0 < n; d0 += DC) {
            int64_t dc = n - d0 < DC ? n - d0 : DC;
            int first = d0 == 0, last = d0 + dc == n;
            pack_bt(B + c0 * ldb + d0, ldb, w, dc, Kt);
            for (int64_t r0 = 0; r0 < br; r0 += MR) {
                int64_t m = br - r0 < MR ? br - r0 : MR;
                const float *a = A + r0 * lda + d0;
                float *s = S + r0 * lds + c0;
                if (nv == 1) scores_blk(1, m, dc, a, lda, Kt, s, lds, kl, scale, first, last);
                else scores_blk(2, m, dc, a, lda, Kt, s, lds, kl, scale, first, last);
            }
        }
    }
}

/* O[m, 8 nv] = diag(alpha) O + P[m, bc] X[bc, 8 nv]   (last vector masked by kl) */
INL void pv_blk(const int nv, int64_t m, int64_t bc, const float *P, int64_t ldp,
                const float *X, int64_t ldx, const float *alpha, float *O, int64_t ldo,
                __m256i kl) {
    const float *p[MR];
    __m256 acc[MR][NVMAX];
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++) {
        int64_t ri = i < m ? i : m - 1;
        p[i] = P + ri * ldp;
        __m256 va = _mm256_set1_ps(alpha ? alpha[ri] : 1.0f);
#pragma GCC unroll 2
        for (int j = 0; j < nv; j++)
            acc[i][j] = _mm256_mul_ps(va, load_v(O + ri * ldo + 8 * j, j == nv - 1, kl));
    }
    for (int64_t c = 0; c < bc; c++) {
        __m256 x[NVMAX];
#pragma GCC unroll 2
        for (int j = 0; j < nv; j++) x[j] = load_v(X + c * ldx + 8 * j, j == nv - 1, kl);
#pragma GCC unroll 8
        for (int i = 0; i < MR; i++) {
            __m256 pi = _mm256_broadcast_ss(p[i] + c);
#pragma GCC unroll 2
            for (int j = 0; j < nv; j++) acc[i][j] = _mm256_fmadd_ps(pi, x[j], acc[i][j]);
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++)
        if (i < m)
#pragma GCC unroll 2
            for (int j = 0; j < nv; j++) store_v(O + i * ldo + 8 * j, j == nv - 1, kl, acc[i][j]);
}

void mha__attn_pv_avx2(int64_t br, int64_t bc, int64_t n, const float *P, int64_t ldp,
                       const float *X, int64_t ldx, const float *alpha, float *O, int64_t ldo) {
    for (int64_t x0 = 0; x0 < n; x0 += PW) {
        int64_t w = n - x0 < PW ? n - x0 : PW;
        int nv = (int)((w + 7) / 8);
        __m256i kl = tail_mask(w - 8 * (nv - 1));
        for (int64_t r0 = 0; r0 < br; r0 += MR) {
            int64_t m = br - r0 < MR ? br - r0 : MR;
            const float *p = P + r0 * ldp, *x = X + x0;
            const float *al = alpha ? alpha + r0 : NULL;
            float *o = O + r0 * ldo + x0;
            if (nv == 1) pv_blk(1, m, bc, p, ldp, x, ldx, al, o, ldo, kl);
            else pv_blk(2, m, bc, p, ldp, x, ldx, al, o, ldo, kl);
        }
    }
}

/* G[m, 8 nv] += P[br, m]^T X[br, 8 nv]   (m keys from column 0 of P; last vector masked) */
INL void ptv_blk(const int nv, int64_t m, int64_t br, const float *P, int64_t ldp,
                 const float *X, int64_t ldx, float *G, int64_t ldg, __m256i kl) {
    int64_t ci[MR];
    __m256 acc[MR][NVMAX];
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++) {
        ci[i] = i < m ? i : m - 1;
#pragma GCC unroll 2
        for (int j = 0; j < nv; j++) acc[i][j] = load_v(G + ci[i] * ldg + 8 * j, j == nv - 1, kl);
    }
    for (int64_t r = 0; r < br; r++) {
        __m256 x[NVMAX];
        const float *pr = P + r * ldp;
#pragma GCC unroll 2
        for (int j = 0; j < nv; j++) x[j] = load_v(X + r * ldx + 8 * j, j == nv - 1, kl);
#pragma GCC unroll 8
        for (int i = 0; i < MR; i++) {
            __m256 pi = _mm256_broadcast_ss(pr + ci[i]);
#pragma GCC unroll 2
            for (int j = 0; j < nv; j++) acc[i][j] = _mm256_fmadd_ps(pi, x[j], acc[i][j]);
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++)
        if (i < m)
#pragma GCC unroll 2
            for (int j = 0; j < nv; j++) store_v(G + i * ldg + 8 * j, j == nv - 1, kl, acc[i][j]);
}

void mha__attn_ptv_avx2(int64_t br, int64_t bc, int64_t n, const float *P, int64_t ldp,
                        const float *X, int64_t ldx, float *G, int64_t ldg) {
    for (int64_t x0 = 0; x0 < n; x0 += PW) {
        int64_t w = n - x0 < PW ? n - x0 : PW;
        int nv = (int)((w + 7) / 8);
        __m256i kl = tail_mask(w - 8 * (nv - 1));
        for (int64_t c0 = 0; c0 < bc; c0 += MR) {
            int64_t m = bc - c0 < MR ? bc - c0 : MR;
            const float *p = P + c0, *x = X + x0;
            float *g = G + c0 * ldg + x0;
            if (nv == 1) ptv_blk(1, m, br, p, ldp, x, ldx, g, ldg, kl);
            else ptv_blk(2, m, br, p, ldp, x, ldx, g, ldg, kl);
        }
    }
}

/* Lanes of 8 mask bytes that are 0 (all-ones) or not (0); reads only bytes c .. bc-1. */
INL __m256i zero_bytes8(const uint8_t *b, int64_t c, int64_t bc) {
    __m128i v;
    if (bc - c >= 8) {
        v = _mm_loadl_epi64((const __m128i *)(b + c));
    } else {
        uint8_t t[8] = {0};
        for (int64_t i = 0; i < bc - c; i++) t[i] = b[c + i];
        v = _mm_loadl_epi64((const __m128i *)t);
    }
    return _mm256_cmpeq_epi32(_mm256_cvtepu8_epi32(v), _mm256_setzero_si256());
}

/* The allowed keys among columns c .. c+7 of a row (all-ones lanes): inside [0, end), not
 * key-padded, not bool-masked. */
INL __m256 allowed8(const mha__attn_tile_mask *mk, const uint8_t *bm, int64_t c, int64_t end,
                    int64_t bc) {
    __m256i k = tail_mask(end - c);
    if (end > c && mk->pad) k = _mm256_and_si256(k, zero_bytes8(mk->pad, c, bc));
    if (end > c && bm) k = _mm256_and_si256(k, zero_bytes8(bm, c, bc));
    return _mm256_castsi256_ps(k);
}

INL float hmax8(__m256 v) {
    __m128 x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_max_ps(x, _mm_movehl_ps(x, x));
    x = _mm_max_ss(x, _mm_shuffle_ps(x, x, 1));
    return _mm_cvtss_f32(x);
}
INL float hsum8(__m256 v) {
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_shuffle_ps(x, x, 1));
    return _mm_cvtss_f32(x);
}

void mha__attn_probs_avx2(int64_t br, int64_t bc, float *S, int64_t lds,
                          const mha__attn_tile_mask *mk, const float *lse) {
    for (int64_t r = 0; r < br; r++) {
        float *s = S + r * lds;
        int64_t end = mha__attn_tile_row_end(mk, r, bc);
        const uint8_t *bm = mk->bmask ? mk->bmask + r * mk->ld_mask : NULL;
        const float *fm = mk->fmask ? mk->fmask + r * mk->ld_mask : NULL;
        if (lse[r] == -INFINITY) end = 0;
        __m256 vl = _mm256_set1_ps(lse[r]);
        for (int64_t c = 0; c < bc; c += 8) {
            __m256i kw = tail_mask(bc - c);
            __m256 ka = allowed8(mk, bm, c, end, bc);
            __m256 x = _mm256_maskload_ps(s + c, _mm256_castps_si256(ka));
            if (fm) x = _mm256_add_ps(x, _mm256_maskload_ps(fm + c, _mm256_castps_si256(ka)));
            __m256 p = _mm256_and_ps(ka, mha__vexp256(_mm256_sub_ps(x, vl)));
            _mm256_maskstore_ps(s + c, kw, p);
        }
    }
}

void mha__attn_dsoftmax_avx2(int64_t br, int64_t bc, const float *P, int64_t ldp, float *dP,
                             int64_t ldd, const float *drow, float scale) {
    const __m256 vs = _mm256_set1_ps(scale);
    for (int64_t r = 0; r < br; r++) {
        const float *p = P + r * ldp;
        float *d = dP + r * ldd;
        __m256 vd = _mm256_set1_ps(drow[r]);
        for (int64_t c = 0; c < bc; c += 8) { /* scale * (p * (d - drow)), as the generic */
            __m256i kw = tail_mask(bc - c);
            __m256 t = _mm256_sub_ps(_mm256_maskload_ps(d + c, kw), vd);
            t = _mm256_mul_ps(_mm256_maskload_ps(p + c, kw), t);
            _mm256_maskstore_ps(d + c, kw, _mm256_mul_ps(vs, t));
        }
    }
}

/* FUSED FORWARD (attn_kpack / attn_fwd, contract in kernels.h), as ../avx512/attn.c:
 * packed key tile = panels of PW keys, panel t at Kp + t*PW*n, Kp[t*PW*n + d*PW + c] =
 * K[t*PW + c][d], keys past bc (up to the next 8) zero. attn_fwd walks the query rows by
 * blocks of MR: scores panel by panel in registers (scaled, masked, stored to P, row maxima
 * from the registers), one exp pass with vector row sums, alpha for the block by one vector
 * exp, then O = diag(alpha) O + P V (pv_blk) while the block's P rows are in L1. Keys past
 * the block's last allowed key are never computed. */
void mha__attn_kpack_avx2(int64_t bc, int64_t n, const float *B, int64_t ldb, float *Kp) {
    for (int64_t c0 = 0; c0 < bc; c0 += PW)
        pack_bt(B + c0 * ldb, ldb, bc - c0 < PW ? bc - c0 : PW, n, Kp + c0 * n);
}

/* P[i, c0 .. c0 + 8 nv) (last vector kl) = scale * A[i] Kt (an FMA chain over d in order),
 * then + fmask, excluded keys -inf; vmx[i] = max(vmx[i], those). */
INL void fwd_panel(const int nv, int64_t m, int64_t n, const float *A, int64_t lda,
                   const float *Kt, float scale, float *P, int64_t ldp, __m256i kl,
                   const mha__attn_tile_mask *mk, int masked, int64_t r0, int64_t c0,
                   int64_t bc, __m256 vmx[MR]) {
    const float *a[MR];
    __m256 acc[MR][NVMAX];
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++) {
        a[i] = A + (i < m ? i : m - 1) * lda;
#pragma GCC unroll 2
        for (int j = 0; j < nv; j++) acc[i][j] = _mm256_setzero_ps();
    }
    for (int64_t d = 0; d < n; d++) {
        __m256 b[NVMAX];
#pragma GCC unroll 2
        for (int j = 0; j < nv; j++) b[j] = _mm256_load_ps(Kt + d * PW + 8 * j);
#pragma GCC unroll 8
        for (int i = 0; i < MR; i++) {
            __m256 ai = _mm256_broadcast_ss(a[i] + d);
#pragma GCC unroll 2
            for (int j = 0; j < nv; j++) acc[i][j] = _mm256_fmadd_ps(ai, b[j], acc[i][j]);
        }
    }
    const __m256 vs = _mm256_set1_ps(scale), ninf = _mm256_set1_ps(-INFINITY);
    const __m256 full = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
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
#pragma GCC unroll 2
        for (int j = 0; j < nv; j++) {
            int64_t c = c0 + 8 * j;
            __m256 x = _mm256_mul_ps(vs, acc[i][j]);
            __m256 ka = j == nv - 1 ? _mm256_castsi256_ps(kl) : full;
            if (masked) {
                ka = _mm256_and_ps(ka, allowed8(mk, bm, c, end, bc));
                if (fm) x = _mm256_add_ps(x, _mm256_maskload_ps(fm + c, _mm256_castps_si256(ka)));
            }
            x = _mm256_blendv_ps(ninf, x, ka);
            store_v(P + i * ldp + c, j == nv - 1, kl, x);
            vmx[i] = _mm256_max_ps(x, vmx[i]); /* NaN x: keeps vmx, as the scalar x > mx */
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
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    for (int64_t r0 = 0; r0 < br; r0 += MR) {
        int64_t rows = br - r0 < MR ? br - r0 : MR;
        /* the row end is non-decreasing in r: keys >= bce are excluded for every row here */
        int64_t bce = mha__attn_tile_row_end(mk, r0 + rows - 1, bc);
        if (bce == 0) continue; /* nothing allowed: m, l, O unchanged */
        int masked = any_mask || mha__attn_tile_row_end(mk, r0, bc) < bce;
        float *p = P + r0 * ldp;
        const float *a = A + r0 * lda;
        __m256 vmx[MR];
        for (int i = 0; i < MR; i++) vmx[i] = ninf;
        for (int64_t c0 = 0; c0 < bce; c0 += PW) {
            int64_t w = bce - c0 < PW ? bce - c0 : PW;
            int nvk = (int)((w + 7) / 8);
            __m256i kl = tail_mask(w - 8 * (nvk - 1));
            const float *kt = Kp + c0 * n;
            if (nvk == 1) fwd_panel(1, rows, n, a, lda, kt, scale, p, ldp, kl, mk, masked, r0, c0, bc, vmx);
            else fwd_panel(2, rows, n, a, lda, kt, scale, p, ldp, kl, mk, masked, r0, c0, bc, vmx);
        }
        /* m' per row from the registers; alpha = exp(m - m') for the block by one vector exp */
        float mo[8] __attribute__((aligned(32))) = {0}, mn[8] __attribute__((aligned(32))) = {0};
        float al[8] __attribute__((aligned(32)));
        for (int64_t i = 0; i < rows; i++) {
            float mx = hmax8(vmx[i]);
            mo[i] = m[r0 + i];
            mn[i] = mx > mo[i] ? mx : mo[i];
        }
        _mm256_store_ps(al, mha__vexp256(_mm256_sub_ps(_mm256_load_ps(mo), _mm256_load_ps(mn))));
        for (int64_t i = 0; i < rows; i++) {
            float *pr = p + i * ldp;
            if (mn[i] == -INFINITY) { /* no allowed finite score yet: P = 0, alpha = 1 */
                for (int64_t c = 0; c < bce; c += 8)
                    _mm256_maskstore_ps(pr + c, tail_mask(bce - c), _mm256_setzero_ps());
                al[i] = 1;
                continue;
            }
            __m256 vm = _mm256_set1_ps(mn[i]), vsum = _mm256_setzero_ps();
            for (int64_t c = 0; c < bce; c += 8) {
                __m256i kw = tail_mask(bce - c);
                int last = bce - c < 8;
                __m256 e = mha__vexp256(_mm256_sub_ps(load_v(pr + c, last, kw), vm));
                if (last) e = _mm256_and_ps(e, _mm256_castsi256_ps(kw));
                vsum = _mm256_add_ps(vsum, e);
                if (keep) /* dropped keys: exactly 0 in the product with V */
                    e = _mm256_andnot_ps(
                        _mm256_castsi256_ps(zero_bytes8(keep + (r0 + i) * ldk, c, bce)), e);
                store_v(pr + c, last, kw, e);
            }
            l[r0 + i] = al[i] * l[r0 + i] + hsum8(vsum);
            m[r0 + i] = mn[i];
        }
        /* O = diag(alpha) O + P[rows, bce] V[bce, nv] */
        for (int64_t x0 = 0; x0 < nv; x0 += PW) {
            int64_t w = nv - x0 < PW ? nv - x0 : PW;
            int nvo = (int)((w + 7) / 8);
            __m256i kl = tail_mask(w - 8 * (nvo - 1));
            float *o = O + r0 * ldo + x0;
            if (nvo == 1) pv_blk(1, rows, bce, p, ldp, V + x0, ldv, al, o, ldo, kl);
            else pv_blk(2, rows, bce, p, ldp, V + x0, ldv, al, o, ldo, kl);
        }
    }
}

void mha__attn_fwd_avx2(int64_t br, int64_t bc, int64_t n, int64_t nv, float scale,
                        const float *A, int64_t lda, const float *Kp, const float *V,
                        int64_t ldv, const mha__attn_tile_mask *mk, float *m, float *l,
                        float *O, int64_t ldo, float *P, int64_t ldp) {
    fwd_tile(br, bc, n, nv, scale, A, lda, Kp, V, ldv, mk, m, l, O, ldo, P, ldp, NULL, 0);
}

void mha__attn_fwd_drop_avx2(int64_t br, int64_t bc, int64_t n, int64_t nv, float scale,
                             const float *A, int64_t lda, const float *Kp, const float *V,
                             int64_t ldv, const mha__attn_tile_mask *mk, float *m, float *l,
                             float *O, int64_t ldo, float *P, int64_t ldp,
                             const uint8_t *keep, int64_t ldk) {
    fwd_tile(br, bc, n, nv, scale, A, lda, Kp, V, ldv, mk, m, l, O, ldo, P, ldp, keep, ldk);
}

/* DROPOUT KEEP DECISIONS (attn_dropout, contract in kernels.h), as ../avx512/attn.c: one
 * Philox-4x32-10 per 64-bit lane (words in the low halves; _mm256_mul_epu32 gives the full
 * product of the low halves), 4 groups per ymm, 4 ymm (16 groups, 64 keys) per step. Lane q of
 * vector v holds group 4v + (q/2) + 2(q%2): after interleaving (w0 | w1 << 32) and
 * (w2 | w3 << 32) by 64-bit unpacks, the low unpack holds keys 16v .. 16v+7 in order and the
 * high one 16v+8 .. 16v+15. Unsigned w >= thr is the signed compare of both sides xor 2^31. */
#define PH_M0 0xD2511F53u
#define PH_M1 0xCD9E8D57u
#define PH_W0 0x9E3779B9u
#define PH_W1 0xBB67AE85u
#define DROP_STEP 64 /* keys per step */

/* The keep bytes (0 / 1) of keys 4 g0 .. 4 g0 + 63 of row i, as 2 32-byte vectors. thr1 =
 * (thr - 1) ^ 2^31 (thr >= 1). */
INL void dropout_step(uint32_t g0, __m256i vi, __m256i vbh, __m256i vc3, const __m256i *rk,
                      __m256i thr1, __m256i out[2]) {
    const __m256i m0 = _mm256_set1_epi64x(PH_M0), m1 = _mm256_set1_epi64x(PH_M1);
    const __m256i lane = _mm256_setr_epi64x(0, 2, 1, 3);
    __m256i c0[4], c1[4], c2[4], c3[4];
#pragma GCC unroll 4
    for (int v = 0; v < 4; v++) {
        c0[v] = _mm256_add_epi64(_mm256_set1_epi64x(g0 + 4u * (uint32_t)v), lane);
        c1[v] = vi, c2[v] = vbh, c3[v] = vc3;
    }
#pragma GCC unroll 10
    for (int r = 0; r < 10; r++) {
#pragma GCC unroll 4
        for (int v = 0; v < 4; v++) {
            __m256i p0 = _mm256_mul_epu32(c0[v], m0), p1 = _mm256_mul_epu32(c2[v], m1);
            c0[v] = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p1, 32), c1[v]),
                                     rk[2 * r]);
            c2[v] = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p0, 32), c3[v]),
                                     rk[2 * r + 1]);
            c1[v] = p1, c3[v] = p0;
        }
    }
    const __m256i sign = _mm256_set1_epi32((int)0x80000000u);
    __m256i k[8]; /* -1 / 0 per key, keys 8t .. 8t+7 in k[t] */
#pragma GCC unroll 4
    for (int v = 0; v < 4; v++) {
        __m256i x01 = _mm256_blend_epi32(c0[v], _mm256_slli_epi64(c1[v], 32), 0xAA);
        __m256i x23 = _mm256_blend_epi32(c2[v], _mm256_slli_epi64(c3[v], 32), 0xAA);
        __m256i lo = _mm256_unpacklo_epi64(x01, x23), hi = _mm256_unpackhi_epi64(x01, x23);
        k[2 * v] = _mm256_cmpgt_epi32(_mm256_xor_si256(lo, sign), thr1);
        k[2 * v + 1] = _mm256_cmpgt_epi32(_mm256_xor_si256(hi, sign), thr1);
    }
    /* 32-bit -1/0 lanes to bytes: packs keep the 128-bit halves apart, so 4 vectors of 8 keys
     * pack to dwords (4 keys each) in the order 0 2 4 6 | 1 3 5 7; one permute sorts them */
    const __m256i idx = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7), one = _mm256_set1_epi8(1);
#pragma GCC unroll 2
    for (int h = 0; h < 2; h++) {
        __m256i a = _mm256_packs_epi32(k[4 * h], k[4 * h + 1]);
        __m256i b = _mm256_packs_epi32(k[4 * h + 2], k[4 * h + 3]);
        out[h] = _mm256_and_si256(_mm256_permutevar8x32_epi32(_mm256_packs_epi16(a, b), idx), one);
    }
}

void mha__attn_dropout_avx2(int64_t br, int64_t bc, const mha__attn_dropout *dr, int64_t i0,
                            int64_t j0, uint8_t *keep, int64_t ldk) {
    if (br <= 0 || bc <= 0) return;
    if (dr->thr == 0) { /* every word >= 0 */
        for (int64_t r = 0; r < br; r++) memset(keep + r * ldk, 1, (size_t)bc);
        return;
    }
    __m256i rk[20]; /* round keys, broadcast */
    uint32_t k0 = (uint32_t)dr->key, k1 = (uint32_t)(dr->key >> 32);
    for (int r = 0; r < 10; r++, k0 += PH_W0, k1 += PH_W1)
        rk[2 * r] = _mm256_set1_epi64x(k0), rk[2 * r + 1] = _mm256_set1_epi64x(k1);
    const __m256i thr1 = _mm256_set1_epi32((int)((dr->thr - 1) ^ 0x80000000u));
    const __m256i vbh = _mm256_set1_epi64x(dr->bh), vc3 = _mm256_set1_epi64x(dr->ctr3);
    const int64_t head = j0 & 3, total = head + bc; /* keys from the group-aligned j0 - head */
    for (int64_t r = 0; r < br; r++) {
        uint8_t *kr = keep + r * ldk;
        const __m256i vi = _mm256_set1_epi64x((uint32_t)(i0 + r));
        for (int64_t s = 0; s < total; s += DROP_STEP) {
            __m256i out[2];
            dropout_step((uint32_t)((j0 >> 2) + s / 4), vi, vbh, vc3, rk, thr1, out);
            if (head == 0 && total - s >= DROP_STEP) {
                _mm256_storeu_si256((__m256i *)(kr + s), out[0]);
                _mm256_storeu_si256((__m256i *)(kr + s + 32), out[1]);
            } else { /* a partial step: only bytes of keys in [j0, j0 + bc) */
                uint8_t buf[DROP_STEP] __attribute__((aligned(32)));
                _mm256_store_si256((__m256i *)buf, out[0]);
                _mm256_store_si256((__m256i *)(buf + 32), out[1]);
                int64_t a = s < head ? head : s, e = s + DROP_STEP < total ? s + DROP_STEP : total;
                for (int64_t t = a; t < e; t++) kr[t - head] = buf[t - s];
            }
        }
    }
}

void mha__attn_dropout_apply_avx2(int64_t br, int64_t bc, const uint8_t *keep, int64_t ldk,
                                  float ks, const float *X, int64_t ldx, float *Y,
                                  int64_t ldy) {
    const __m256 vk = _mm256_set1_ps(ks);
    for (int64_t r = 0; r < br; r++) {
        const uint8_t *kr = keep + r * ldk;
        const float *x = X + r * ldx;
        float *y = Y + r * ldy;
        for (int64_t c = 0; c < bc; c += 8) {
            __m256i kw = tail_mask(bc - c);
            int last = bc - c < 8;
            __m256 drop = _mm256_castsi256_ps(zero_bytes8(kr, c, bc));
            __m256 xv = _mm256_mul_ps(load_v(x + c, last, kw), vk);
            store_v(y + c, last, kw, _mm256_andnot_ps(drop, xv));
        }
    }
}
