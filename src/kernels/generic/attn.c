/* attn.c - generic attention tile kernels (FlashAttention-2 building blocks), the reference for
 * the SIMD versions. Contracts: the ATTENTION TILE KERNELS block in kernels.h.
 *
 * Shapes (tile-local): a query tile has br rows, a key tile bc columns; every matrix is
 * row-major with its own leading dimension (ld >= its row length). */
#include "../kernels.h"
#include "../philox.h"

#include <math.h>

/* S[br, bc] = scale * A[br, n] B[bc, n]^T      (scores: A = q tile, B = k tile;
 *                                                dP: A = dout tile, B = v tile, scale 1) */
void mha__attn_scores_generic(int64_t br, int64_t bc, int64_t n, float scale, const float *A,
                              int64_t lda, const float *B, int64_t ldb, float *S, int64_t lds) {
    for (int64_t r = 0; r < br; r++) {
        const float *a = A + r * lda;
        for (int64_t c = 0; c < bc; c++) {
            const float *b = B + c * ldb;
            float acc = 0;
            for (int64_t d = 0; d < n; d++) acc += a[d] * b[d];
            S[r * lds + c] = acc * scale;
        }
    }
}

/* One step of the online softmax over a scaled score tile, in place:
 *   s = S + fmask (excluded: -inf);  m' = max(m, max_c s);  alpha = exp(m - m');
 *   S = exp(s - m') (excluded: 0);    l = alpha * l + sum_c S;  m = m'
 * A row with m' = -inf (nothing allowed so far) gets S = 0, alpha = 1, m and l unchanged. */
void mha__attn_softmax_generic(int64_t br, int64_t bc, float *S, int64_t lds,
                               const mha__attn_tile_mask *mk, float *m, float *l, float *alpha) {
    for (int64_t r = 0; r < br; r++) {
        float *s = S + r * lds;
        int64_t end = mha__attn_tile_row_end(mk, r, bc);
        const uint8_t *bm = mk->bmask ? mk->bmask + r * mk->ld_mask : NULL;
        const float *fm = mk->fmask ? mk->fmask + r * mk->ld_mask : NULL;
        const int64_t start = mha__attn_tile_row_start(mk, r, bc);
        float mx = m[r];
        for (int64_t c = 0; c < bc; c++) {
            float x = mha__attn_score_mod(mk, s[c], r, c);
            if (c >= end || c < start || (mk->pad && mk->pad[c]) || (bm && bm[c])) x = -INFINITY;
            else if (fm) x += fm[c];
            s[c] = x;
            if (x > mx) mx = x;
        }
        if (mx == -INFINITY) {
            for (int64_t c = 0; c < bc; c++) s[c] = 0;
            alpha[r] = 1;
            continue;
        }
        float sum = 0;
        for (int64_t c = 0; c < bc; c++) {
            float p = s[c] == -INFINITY ? 0.0f : expf(s[c] - mx);
            s[c] = p;
            sum += p;
        }
        float a = m[r] == -INFINITY ? 0.0f : expf(m[r] - mx);
        alpha[r] = a;
        l[r] = a * l[r] + sum;
        m[r] = mx;
    }
}

/* Probabilities recomputed from the log-sum-exp, in place over a scaled score tile:
 *   S = exp(S + fmask - lse[r]), excluded keys and rows with lse = -inf: 0 */
void mha__attn_probs_generic(int64_t br, int64_t bc, float *S, int64_t lds,
                             const mha__attn_tile_mask *mk, const float *lse, float *dcap) {
    for (int64_t r = 0; r < br; r++) {
        float *s = S + r * lds;
        int64_t end = mha__attn_tile_row_end(mk, r, bc),
                start = mha__attn_tile_row_start(mk, r, bc);
        const uint8_t *bm = mk->bmask ? mk->bmask + r * mk->ld_mask : NULL;
        const float *fm = mk->fmask ? mk->fmask + r * mk->ld_mask : NULL;
        float ls = lse[r];
        for (int64_t c = 0; c < bc; c++) {
            if (dcap && mk->softcap > 0) {
                float t = tanhf(s[c] / mk->softcap);
                dcap[r * lds + c] = 1 - t * t;
            }
            if (ls == -INFINITY || c >= end || c < start || (mk->pad && mk->pad[c]) ||
                (bm && bm[c])) {
                s[c] = 0;
                continue;
            }
            float x = mha__attn_score_mod(mk, s[c], r, c);
            if (fm) x += fm[c];
            s[c] = x == -INFINITY ? 0.0f : expf(x - ls);
        }
    }
}

/* O[br, n] = diag(alpha) O + P[br, bc] X[bc, n]     (alpha NULL: 1)
 * (forward: acc = alpha acc + P v;  backward: dq += dS k) */
void mha__attn_pv_generic(int64_t br, int64_t bc, int64_t n, const float *P, int64_t ldp,
                          const float *X, int64_t ldx, const float *alpha, float *O, int64_t ldo) {
    for (int64_t r = 0; r < br; r++) {
        float *o = O + r * ldo;
        if (alpha && alpha[r] != 1.0f)
            for (int64_t x = 0; x < n; x++) o[x] *= alpha[r];
        const float *p = P + r * ldp;
        for (int64_t c = 0; c < bc; c++) {
            float w = p[c];
            if (w == 0) continue;
            const float *xr = X + c * ldx;
            for (int64_t x = 0; x < n; x++) o[x] += w * xr[x];
        }
    }
}

/* G[bc, n] += P[br, bc]^T X[br, n]      (dv += W^T dout;  dk += dS^T q) */
void mha__attn_ptv_generic(int64_t br, int64_t bc, int64_t n, const float *P, int64_t ldp,
                           const float *X, int64_t ldx, float *G, int64_t ldg) {
    for (int64_t r = 0; r < br; r++) {
        const float *p = P + r * ldp, *xr = X + r * ldx;
        for (int64_t c = 0; c < bc; c++) {
            float w = p[c];
            if (w == 0) continue;
            float *g = G + c * ldg;
            for (int64_t x = 0; x < n; x++) g[x] += w * xr[x];
        }
    }
}

/* Softmax backward, in place over dP:  dS = scale * P * (dP - drow[r]) */
void mha__attn_dsoftmax_generic(int64_t br, int64_t bc, const float *P, int64_t ldp, float *dP,
                                int64_t ldd, const float *drow, float scale, const float *G) {
    for (int64_t r = 0; r < br; r++) {
        const float *p = P + r * ldp;
        float *d = dP + r * ldd;
        float dr = drow[r];
        for (int64_t c = 0; c < bc; c++) d[c] = scale * (p[c] * (d[c] - dr));
        if (G)
            for (int64_t c = 0; c < bc; c++) d[c] *= G[r * ldp + c];
    }
}

/* Key tile packing of the generic table: a plain copy, Kp[c*n + d] = B[c*ldb + d]. */
void mha__attn_kpack_generic(int64_t bc, int64_t n, const float *B, int64_t ldb, float *Kp) {
    for (int64_t c = 0; c < bc; c++)
        for (int64_t d = 0; d < n; d++) Kp[c * n + d] = B[c * ldb + d];
}

/* kernels.h: attn_scores_kp, on this table's packing (a plain copy [bc, n]) */
void mha__attn_scores_kp_generic(int64_t br, int64_t bc, int64_t n, float scale, const float *A,
                                 int64_t lda, const float *Kp, float *S, int64_t lds) {
    mha__attn_scores_generic(br, bc, n, scale, A, lda, Kp, n, S, lds);
}

/* One forward step of a tile pair without dropout (the reference for the fused SIMD kernels):
 *   P = scale A K^T;  online softmax step over P (alpha per row);  O = diag(alpha) O + P V
 * by the three kernels above, 64 rows at a time (rows are independent). */
void mha__attn_fwd_generic(int64_t br, int64_t bc, int64_t n, int64_t nv, float scale,
                           const float *A, int64_t lda, const float *Kp, const float *V,
                           int64_t ldv, const mha__attn_tile_mask *mk, float *m, float *l, float *O,
                           int64_t ldo, float *P, int64_t ldp) {
    float alpha[64];
    for (int64_t r0 = 0; r0 < br; r0 += 64) {
        int64_t rb = br - r0 < 64 ? br - r0 : 64;
        mha__attn_tile_mask mr = mha__attn_tile_mask_rows(mk, r0);
        mha__attn_scores_generic(rb, bc, n, scale, A + r0 * lda, lda, Kp, n, P + r0 * ldp, ldp);
        mha__attn_softmax_generic(rb, bc, P + r0 * ldp, ldp, &mr, m + r0, l + r0, alpha);
        mha__attn_pv_generic(rb, bc, nv, P + r0 * ldp, ldp, V, ldv, alpha, O + r0 * ldo, ldo);
    }
}

/* attn_fwd with dropout (the reference for the SIMD versions): the online softmax step sees
 * every allowed probability (m, l as without dropout), the product with V only the kept ones. */
void mha__attn_fwd_drop_generic(int64_t br, int64_t bc, int64_t n, int64_t nv, float scale,
                                const float *A, int64_t lda, const float *Kp, const float *V,
                                int64_t ldv, const mha__attn_tile_mask *mk, float *m, float *l,
                                float *O, int64_t ldo, float *P, int64_t ldp, const uint8_t *keep,
                                int64_t ldk) {
    float alpha[64];
    for (int64_t r0 = 0; r0 < br; r0 += 64) {
        int64_t rb = br - r0 < 64 ? br - r0 : 64;
        mha__attn_tile_mask mr = mha__attn_tile_mask_rows(mk, r0);
        float *pt = P + r0 * ldp;
        mha__attn_scores_generic(rb, bc, n, scale, A + r0 * lda, lda, Kp, n, pt, ldp);
        mha__attn_softmax_generic(rb, bc, pt, ldp, &mr, m + r0, l + r0, alpha);
        for (int64_t r = 0; r < rb; r++) { /* keys past the row end are already 0 */
            int64_t end = mha__attn_tile_row_end(&mr, r, bc);
            const uint8_t *kr = keep + (r0 + r) * ldk;
            for (int64_t c = 0; c < end; c++)
                if (!kr[c]) pt[r * ldp + c] = 0;
        }
        mha__attn_pv_generic(rb, bc, nv, pt, ldp, V, ldv, alpha, O + r0 * ldo, ldo);
    }
}

/* Dropout keep decisions of a tile: one Philox-4x32-10 call per group of four keys
 * (kernels/philox.h: mha__philox4x32, the generator of src/attn/attn_common.c). */
void mha__attn_dropout_generic(int64_t br, int64_t bc, const mha__attn_dropout *dr, int64_t i0,
                               int64_t j0, uint8_t *keep, int64_t ldk) {
    for (int64_t r = 0; r < br; r++) {
        uint8_t *kr = keep + r * ldk;
        for (int64_t c = 0; c < bc;) {
            int64_t j = j0 + c;
            uint32_t w[4];
            mha__philox4x32(dr->key, (uint32_t)(j >> 2), (uint32_t)(i0 + r), dr->bh, dr->ctr3, w);
            for (int64_t t = j & 3; t < 4 && c < bc; t++, c++) kr[c] = w[t] >= dr->thr;
        }
    }
}

/* Y = keep ? X * ks : 0 over a tile (in place when Y == X). */
void mha__attn_dropout_apply_generic(int64_t br, int64_t bc, const uint8_t *keep, int64_t ldk,
                                     float ks, const float *X, int64_t ldx, float *Y, int64_t ldy) {
    for (int64_t r = 0; r < br; r++)
        for (int64_t c = 0; c < bc; c++)
            Y[r * ldy + c] = keep[r * ldk + c] ? X[r * ldx + c] * ks : 0.0f;
}
