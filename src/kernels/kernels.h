/* kernels.h - the kernel table and the micro-kernel contracts: all that drivers see.
 *
 * Generic first, then override: mha__kernels_init_avx2() starts from the generic table and
 * replaces only what it implements, so every table is complete. Drivers (src/attn, the module)
 * call through the table chosen by the context; kernels never allocate, never call back up,
 * and take no thread decisions (drivers split the work and call kernels per block).
 *
 * CONTRACTS
 *   sgemm: C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C, row-major, single-threaded.
 *     op(A) = A (lda >= K) or A^T (ta != 0: A is [K,M], lda >= M); same for B with tb.
 *     beta == 0: C is never read (may hold NaN). M, N, K may be 0. Every M, N, K is the
 *     kernel's job (edge tiles included). The summation order over K for an element of C
 *     depends only on K, never on M, N or the position: the result is the same whichever
 *     block of rows or columns a driver hands a thread.
 *
 *   gemm micro-kernel (the Goto/BLIS structure; src/attn/gemm.c is the driver):
 *     gemm_ukr(k, a, b, alpha, beta, c, ldc, m, n):
 *       C[m,n] = alpha * Ap[MR,k] * Bp[k,NR] (top-left m x n of the block) + beta * C
 *     a: a packed A micro-panel, k columns of MR values: a[p*MR + i] = op(A)[i][p];
 *     b: a packed B micro-panel, k rows of NR values:    b[p*NR + j] = op(B)[p][j];
 *     both 64-byte aligned, rows/columns past m or n zero-padded by the packing.
 *     c: row-major, ldc >= n. 1 <= m <= MR and 1 <= n <= NR: edge tiles are the kernel's job
 *     (masked or partial stores), and the arithmetic of an element never depends on m, n or
 *     its position in the block. beta == 0: C is never read (may hold NaN). k >= 1.
 *     Register-blocked: the MR x NR accumulators stay in registers for the whole k loop,
 *     summed p = 0..k-1 in order; then c = alpha * acc + beta * c.
 *   gemm_pack(X, rs, cs, rows, k, r, dst): packs the rows x k matrix X[i*rs + p*cs] into
 *     ceil(rows / r) micro-panels of r x k, panel t at dst + t*r*k, dst[p*r + i] =
 *     X[(t*r + i)*rs + p*cs], rows past `rows` in the last panel zero. Used with r = MR for
 *     op(A) and r = NR for op(B)^T.
 *   gemm_kc, gemm_mc, gemm_nc: the driver's cache blocking for this kernel (mc a multiple of
 *     MR, nc of NR). KC is fixed per table so the summation order depends only on K.
 *
 *   bf16 / f16 operands (mha_gemm; the driver's loops are the same, the dtype enters here):
 *   gemm_pack_h(X, dt, rs, cs, rows, k, r, dst): gemm_pack of a matrix of 2-byte elements
 *     (dt MHA_DTYPE_BF16 or MHA_DTYPE_F16), each converted exactly to float32 (kernels/cvt.h):
 *     the panels of gemm_pack, for gemm_ukr. Every table has one.
 *   cvt_to_f32(dt, src, dst, n) / cvt_from_f32(dt, src, dst, n): n >= 0 elements of a
 *     2-byte type dt (MHA_DTYPE_BF16 or MHA_DTYPE_F16) to float32, exactly, and float32 to
 *     dt, each rounded once: bit for bit kernels/cvt.h's scalar conversions (the generic
 *     table's loops), any alignment, nothing read or written past n. Every table has both.
 *   scale_f32(n, a, x, y): y[i] = a * x[i] for i < n (n >= 0; one float32 multiply each, so
 *     the same bits in every table; y == x allowed, any alignment, nothing past n): the
 *     drivers' row scalings (a query tile times the softmax scale, an output row divided by
 *     its sum), which their generic code would run 4 floats at a time. Every table has one.
 *   gemm_bf16_ukr, gemm_bf16_pack: a micro-kernel on bfloat16 pairs along k (AVX512_BF16's
 *     vdpbf16ps), or NULL (the table then runs bf16 as gemm_pack_h + gemm_ukr). Its MR x NR
 *     and blocking are gemm_bf16_mr .. gemm_bf16_nc (KC even: a pair never straddles blocks).
 *   gemm_bf16_pack(X, rs, cs, rows, k, r, dst): X a rows x k bfloat16 matrix, X[i*rs + p*cs];
 *     ceil(rows / r) panels of r x kp pairs, kp = ceil(k / 2), panel t at dst + t*r*kp,
 *     dst[q*r + i] = X(t*r + i, 2q) | X(t*r + i, 2q + 1) << 16 (the 32-bit word vdpbf16ps
 *     reads), the element past an odd k and the rows past `rows` zero.
 *   gemm_bf16_ukr(kp, a, b, alpha, beta, c, ldc, m, n): as gemm_ukr on pair panels:
 *     C[m,n] = alpha * sum_q (a_q,lo b_q,lo + a_q,hi b_q,hi) + beta * C, a[q*MR + i] and
 *     b[q*NR + j] packed pairs (b 64-byte aligned), accumulated in float32 q = 0..kp-1 in
 *     order, each pair as vdpbf16ps adds it; the same edge and beta rules as gemm_ukr.
 */
#ifndef MHA_KERNELS_H
#define MHA_KERNELS_H

#include "mha.h"
#include <math.h>
#include <stddef.h>
#include <stdint.h>

/* ATTENTION TILE KERNELS (the FlashAttention-2 building blocks; drivers: src/attn/attn_*.c)
 *
 *   A driver cuts the L query rows of one (batch, head) into tiles of br <= attn_br rows and
 *   the S keys into tiles of bc <= attn_bc columns, and calls these kernels per tile pair.
 *   Every matrix is row-major with a leading dimension (ld >= its row length); q/k/v/out rows
 *   come straight from the caller's strided views (ld = the view's row stride). Any
 *   1 <= br <= attn_br, 1 <= bc <= attn_bc and n >= 0 (head dims) is the kernel's job,
 *   edge tiles included; kernels never allocate, never read outside [br, bc] / [*, n].
 *   The arithmetic of an element never depends on the thread or the tile's position, so a
 *   driver that visits tiles in a fixed order is bitwise reproducible for any thread count.
 *
 *   Masks of a tile (mha__attn_tile_mask, tile-local coordinates r < br, c < bc): a key
 *   c of row r is excluded iff c >= mha__attn_tile_row_end(mk, r, bc) (causality, the
 *   window's right bound and key_lengths), or c < mha__attn_tile_row_start(mk, r, bc) (the
 *   window's left bound), or pad[c] != 0, or bmask[r*ld_mask + c] != 0; otherwise its scaled
 *   score s becomes mha__attn_score_mod(mk, s, r, c) (softcap, then ALiBi) plus
 *   fmask[r*ld_mask + c] (may be -inf). NULL pointers: no mask. Where this contract says
 *   "scaled score" below, read it with these transforms.
 *
 *   attn_scores(br, bc, n, scale, A, lda, B, ldb, S, lds):
 *       S[br,bc] = scale * A[br,n] B[bc,n]^T         (q k^T * scale; also dP = dout v^T)
 *   attn_scores_kp(br, bc, n, scale, A, lda, Kp, S, lds): attn_scores with B given packed,
 *       Kp = attn_kpack(bcp, n, B, ldb, Kp) of a tile of bcp >= bc keys (the first bc used),
 *       bit for bit the same S: a driver packs a key tile once for all its query tiles
 *       (attn_bc <= attn_fwd_bc in every table). n == 0: Kp is not read.
 *   attn_softmax(br, bc, S, lds, mk, m, l, alpha): the online-softmax step inside attn_fwd
 *       (not a table entry: the generic fused kernel calls mha__attn_softmax_generic), in place:
 *       s = S + fmask, excluded -> -inf;  m' = max(m[r], max_c s);  alpha[r] = exp(m[r] - m');
 *       S = exp(s - m') (excluded: exactly 0);  l[r] = alpha[r] l[r] + sum_c S;  m[r] = m'.
 *       A row with m' = -inf (no allowed finite score yet): S = 0, alpha = 1, m, l unchanged.
 *       m starts at -inf and l at 0; after the last tile lse = m + log(l) (l = 0: -inf).
 *   attn_probs(br, bc, S, lds, mk, lse, dcap): in place, S = exp(mod(S) + fmask - lse[r]);
 *       excluded keys and rows with lse[r] = -inf: exactly 0. With mk->softcap > 0 and dcap
 *       non-NULL, also dcap[r*lds + c] = 1 - t^2, t = tanh(S / softcap) of the score before
 *       (the softcap's derivative, for the backward); dcap NULL: not written.
 *   attn_pv(br, bc, n, P, ldp, X, ldx, alpha, O, ldo):
 *       O[br,n] = diag(alpha) O + P[br,bc] X[bc,n]   (alpha NULL: 1; O always read, finite)
 *       (forward accumulator update; backward dq += dS k)
 *   attn_ptv(br, bc, n, P, ldp, X, ldx, G, ldg):
 *       G[bc,n] += P[br,bc]^T X[br,n]                (backward dv += W^T dout, dk += dS^T q)
 *   attn_dsoftmax(br, bc, P, ldp, dP, lddp, drow, scale, G): in place over dP,
 *       dP = scale * P * (dP - drow[r])               (softmax backward, drow = rowsum(dO*O))
 *       then, G non-NULL, dP *= G[r*ldp + c]           (the softcap's derivative, from probs)
 *   Kernels may skip products with an exact 0 weight (same result for finite inputs).
 *
 *   Fused forward (every table has attn_kpack, attn_fwd and attn_fwd_drop: they are the
 *   forward's only path; the entries above serve the backward and the optional weights):
 *   Their tiles: br <= FBR and bc <= FBC, where FBR, FBC = attn_fwd_br, attn_fwd_bc (every
 *   table sets them), so the forward can use other tile sizes than the backward.
 *   attn_kpack(bc, n, B, ldb, Kp): packs a key tile B[bc, n] (1 <= bc <= FBC, n >= 1) into
 *       Kp, FBC * n floats, 64-byte aligned, in a layout private to this table (generic:
 *       a plain copy [bc, n]). Pure data movement: a driver may pack a tile once and reuse it
 *       for every query tile of the head.
 *   attn_fwd(br, bc, n, nv, scale, A, lda, Kp, V, ldv, mk, m, l, O, ldo, P, ldp): one
 *       forward step of a tile pair without dropout (n >= 1), i.e. in effect
 *           attn_scores(br, bc, n, scale, A, lda, K, .., P, ldp);
 *           attn_softmax(br, bc, P, ldp, mk, m, l, alpha);
 *           attn_pv(br, bc, nv, P, ldp, V, ldv, alpha, O, ldo);
 *       with K the tile packed in Kp. P [br, ldp >= bc] is scratch (undefined afterwards).
 *       Same masks, -inf and fully-masked-row rules as attn_softmax (a row without an
 *       allowed finite score so far keeps m, l and O unchanged). The summation order of a
 *       score or an output element may differ from the separate kernels but never depends on
 *       the thread or the tile's position. mk->pf non-NULL: the kernel may ask for lines of
 *       that stream while it computes (mha__attn_pf_step; the generic one does not).
 *   attn_fwd_drop(br, bc, n, nv, scale, A, lda, Kp, V, ldv, mk, m, l, O, ldo, P, ldp, keep,
 *       ldk): attn_fwd with attention dropout. keep [br, ldk >= bc] bytes, nonzero
 *       = kept: the running max m and the row sum l use the probabilities BEFORE dropout
 *       (as attn_softmax), the product with V uses them with the dropped keys set to exactly
 *       0, i.e. in effect attn_scores; attn_softmax; P[r][c] = keep[r*ldk + c] ? P : 0;
 *       attn_pv. The 1/(1-p) scale is the driver's (applied with the final 1/l). Same
 *       tiles, masks and rules as attn_fwd; keep is read only for c < mha__attn_tile_row_end(mk,
 *       br - 1, bc) (the keys that some row of the tile may use).
 *
 *   Dropout keep decisions (attention dropout, the scheme of src/attn/attn_common.h):
 *   attn_dropout(br, bc, dr, i0, j0, keep, ldk): for r < br, c < bc (any br, bc >= 0; any
 *       i0, j0 >= 0, j0 need not be a multiple of 4), with i = i0 + r, j = j0 + c,
 *           w = Philox4x32-10(key = dr->key, counter = (j / 4, i, dr->bh, dr->ctr3))[j % 4]
 *           keep[r*ldk + c] = w >= dr->thr ? 1 : 0
 *       (counter words: the low 32 bits of j / 4 and i). Bytes outside [br, bc] of the
 *       ldk-wide rows are never written. SIMD versions run one Philox per lane and must be
 *       bitwise identical to the generic one (a pure function: no rounding involved).
 *   attn_dropout_apply(br, bc, keep, ldk, ks, X, ldx, Y, ldy): for r < br, c < bc,
 *           Y[r*ldy + c] = keep[r*ldk + c] ? X[r*ldx + c] * ks : 0   (exactly 0, even for a
 *       NaN X); Y == X (same ld) works in place. Every table has one; SIMD versions are bitwise
 *       identical to the generic one (one rounding per element).
 */
typedef struct {
    uint64_t key;  /* Philox key */
    uint32_t bh;   /* counter word 2 */
    uint32_t ctr3; /* counter word 3 */
    uint32_t thr;  /* keep iff the word >= thr (0: keep all) */
} mha__attn_dropout;

/* LINES TO FETCH WHILE COMPUTING: rows a driver wants in the outer caches by the time it
 * needs them (the next head's q, k and v, the rows a task will write), handed to a fused
 * kernel in its tile context (mha__attn_tile_mask.pf). The kernel asks for a line or two per
 * step of its product with V (mha__attn_pf_step), so the requests spread over the
 * computation instead of going out in one burst that fills the miss buffers and stalls the
 * core; the driver issues whatever is left afterwards (mha__attn_pf_flush). Hints only: no
 * result depends on them. Spans of rows: base, rows, row stride and bytes per row. */
#define MHA__PF_SPANS 4
typedef struct {
    const char *p; /* the next line of the current row */
    int64_t left;  /* lines left in the current row (0: the next row, if any) */
    int span, nspan;
    int64_t row; /* the current row of span `span` (-1 before its first) */
    struct {
        const char *base;
        int64_t rows, ld, bytes;
    } s[MHA__PF_SPANS];
} mha__attn_pf;

/* The next row (or span) of a stream whose current row is done; 0 when nothing is left. */
static inline int mha__attn_pf_next(mha__attn_pf *pf) {
    while (pf->span < pf->nspan) {
        if (++pf->row < pf->s[pf->span].rows) {
            pf->p = pf->s[pf->span].base + pf->row * pf->s[pf->span].ld;
            pf->left = (pf->s[pf->span].bytes + 63) / 64;
            return 1;
        }
        pf->span++, pf->row = -1;
    }
    return 0;
}

/* One step: the stream's next MHA__PF_STEP lines into the outer caches (fewer, or none, at
 * its end). Two lines per step of the forward's product with V (128 bytes per 6 x 4 FMAs at
 * D = 64) did better than one, which left a causal tile's stream unfinished, and than four,
 * whose requests came in bursts again (causal N = 256: +1-3% and +1%). */
#define MHA__PF_STEP 2
static inline void mha__attn_pf_step(mha__attn_pf *pf) {
    for (int i = 0; i < MHA__PF_STEP; i++) {
        if (pf->left == 0 && !mha__attn_pf_next(pf)) return;
        __builtin_prefetch(pf->p, 0, 2);
        pf->p += 64, pf->left--;
    }
}

typedef struct {
    int64_t col_end;      /* columns c >= col_end are excluded (key_lengths); may be > bc */
    int64_t diag;         /* causal: c excluded iff c > r + diag; MHA__ATTN_NO_DIAG: none */
    const uint8_t *pad;   /* [bc] or NULL */
    const uint8_t *bmask; /* [br, ld_mask] or NULL */
    const float *fmask;   /* [br, ld_mask] or NULL */
    int64_t ld_mask;
    /* the fields below are all 0 (as a zero or partial initializer leaves them) when unused */
    int has_lo;    /* the window's left bound: c excluded iff c < r + lo */
    int64_t lo;    /* (meaningful only with has_lo) */
    float softcap; /* > 0: a scaled score s becomes softcap * tanh(s / softcap) first */
    float slope;   /* ALiBi: then s - slope * |r + adiag - c| (slope 0: no bias) */
    int64_t adiag;
    mha__attn_pf *pf; /* lines to fetch while computing (fused kernels; NULL: none) */
} mha__attn_tile_mask;

#define MHA__ATTN_NO_DIAG (INT64_MAX / 4)

/* Keys c >= the result are excluded for row r by causality, the window's right bound or
 * key_lengths (in [0, bc]). */
static inline int64_t mha__attn_tile_row_end(const mha__attn_tile_mask *mk, int64_t r, int64_t bc) {
    int64_t e = mk->col_end < bc ? mk->col_end : bc;
    if (mk->diag != MHA__ATTN_NO_DIAG && r + mk->diag + 1 < e) e = r + mk->diag + 1;
    return e < 0 ? 0 : e;
}

/* Keys c < the result are excluded for row r by the window's left bound (in [0, bc]). */
static inline int64_t mha__attn_tile_row_start(const mha__attn_tile_mask *mk, int64_t r,
                                               int64_t bc) {
    if (!mk->has_lo) return 0;
    int64_t s = r + mk->lo;
    return s < 0 ? 0 : s > bc ? bc : s;
}

/* The masks of rows r0 .. of a tile, as a tile of their own (row r0 becomes row 0). */
static inline mha__attn_tile_mask mha__attn_tile_mask_rows(const mha__attn_tile_mask *mk,
                                                           int64_t r0) {
    mha__attn_tile_mask m = *mk;
    if (m.diag != MHA__ATTN_NO_DIAG) m.diag += r0;
    m.lo += r0;
    m.adiag += r0;
    if (m.bmask) m.bmask += r0 * m.ld_mask;
    if (m.fmask) m.fmask += r0 * m.ld_mask;
    return m;
}

/* The score transforms of a tile (kernels.h contract: softcap, then ALiBi) on the scaled score
 * s of row r, key c; the scalar definition every kernel follows (SIMD ones within rounding). */
static inline float mha__attn_score_mod(const mha__attn_tile_mask *mk, float s, int64_t r,
                                        int64_t c) {
    if (mk->softcap > 0) s = mk->softcap * tanhf(s / mk->softcap);
    if (mk->slope != 0) {
        int64_t d = r + mk->adiag - c;
        s -= mk->slope * (float)(d < 0 ? -d : d);
    }
    return s;
}

/* BFLOAT16 FUSED FORWARD (optional entries: NULL in a table without them; the driver then runs
 * bf16 calls on float32 copies through the float32 kernels)
 *
 *   Inputs are bfloat16 (uint16_t, the top half of a float32); products of two bf16 values
 *   are exact in float32 and are summed in float32 two at a time (vdpbf16ps: a pair's two
 *   products added to the accumulator in turn), so the reduction over the head dim runs over
 *   PAIRS of its elements, and the product with V over pairs of keys.
 *   attn_kpack_bf16(bc, n, B, ldb, Kp): packs a key tile B[bc, n] (bf16, 1 <= bc <= FBC,
 *       n >= 1) into Kp: panels of attn_bf16_pw keys, panel t at Kp + t * pw * np (np = n
 *       rounded up to even), Kp[t*pw*np + p*2*pw + 2c + e] = B[t*pw + c][2p + e]; zero for
 *       2p + e >= n and for keys past bc (to the end of the panel's last vector).
 *   attn_vpack_bf16(bc, nv, V, ldv, Vp): a value tile V[bc, nv] (bf16) in pairs of keys:
 *       Vp[(q*nv + x)*2 + e] = V[2q + e][x], zero for 2q + e >= bc (q < ceil(bc / 2)).
 *   attn_fwd_bf16(br, bc, n, nv, scale, A, lda, Kp, Vp, mk, m, l, O, ldo, P, ldp, keep, ldk):
 *       attn_fwd / attn_fwd_drop (keep NULL: no dropout) on bf16 query rows A [br, np] (lda
 *       >= np, the elements n .. np zero), the packed Kp and Vp, with
 *           s = scale * (A_r . K_c)   (scale applied to the float32 sum; masks, transforms
 *                                      and the online softmax as attn_fwd, in float32)
 *       and the product with V on the probabilities ROUNDED to bf16 (m and l from the float32
 *       ones): O = diag(alpha) O + bf16(P) V, accumulated in float32. P [br, ldp >= bc]
 *       float32 scratch. Same tiles (attn_fwd_br, attn_fwd_bc), rules and determinism as
 *       attn_fwd. The probabilities' exp may be coarser than attn_fwd's: relative error
 *       below 8e-6 (they are rounded to bf16, half-ulp 2^-9, as operands).
 */
/* BFLOAT16 BACKWARD (optional as the forward's; the driver keeps P, dP and dS in float32 and
 * rounds them to bf16 pairs only for the products, as the forward rounds P):
 *   attn_scores_bf16(br, bc, n, scale, A, lda, Kp, S, lds): S[br, bc] = scale * A Kp^T, A bf16
 *       rows [br, np] (elements n .. np zero), Kp a key tile packed by attn_kpack_bf16
 *   attn_probs_bf16: attn_probs (same arguments and rules) with the bf16 forward's exp
 *       (relative error below 8e-6: P is rounded to bf16 for its products)
 *   attn_pairs_bf16(br, bc, P, ldp): in place, row r's P[r][2t], P[r][2t+1] rounded to bf16 as
 *       one 32-bit pair at byte 4t of the row (t < ceil(bc / 2); an odd bc's last pair gets 0)
 *   attn_tpairs_bf16(br, bc, P, ldp, T, ldt): T (bf16) pair (s, c) at T + 2 (s ldt + c) =
 *       (P[2s][c], P[2s+1][c]) rounded (row br: 0), s < ceil(br / 2), c < bc (ldt >= bc)
 *   attn_pv_bf16(br, bc, n, P2, ldp, V2, O, ldo): O[br, n] += P2 V2, P2 rows of key pairs
 *       (attn_pairs_bf16), V2 [ceil(bc / 2), n, 2] pairs of rows (attn_vpack_bf16)
 *   attn_ptv_bf16(br, bc, n, T, ldt, X2, G, ldg): G[bc, n] += T^T X2, T from attn_tpairs_bf16,
 *       X2 [ceil(br / 2), n, 2] pairs of rows (attn_vpack_bf16 of the br rows)
 * Every sum in float32, a pair's two products in turn (vdpbf16ps). */
typedef void mha__attn_scores_bf16_t(int64_t br, int64_t bc, int64_t n, float scale,
                                     const uint16_t *A, int64_t lda, const uint16_t *Kp, float *S,
                                     int64_t lds);
typedef void mha__attn_pairs_bf16_t(int64_t br, int64_t bc, float *P, int64_t ldp);
typedef void mha__attn_tpairs_bf16_t(int64_t br, int64_t bc, const float *P, int64_t ldp,
                                     uint16_t *T, int64_t ldt);
typedef void mha__attn_pv_bf16_t(int64_t br, int64_t bc, int64_t n, const float *P2, int64_t ldp,
                                 const uint16_t *V2, float *O, int64_t ldo);
typedef void mha__attn_ptv_bf16_t(int64_t br, int64_t bc, int64_t n, const uint16_t *T, int64_t ldt,
                                  const uint16_t *X2, float *G, int64_t ldg);
typedef void mha__attn_kpack_bf16_t(int64_t bc, int64_t n, const uint16_t *B, int64_t ldb,
                                    uint16_t *Kp);
typedef void mha__attn_vpack_bf16_t(int64_t bc, int64_t nv, const uint16_t *V, int64_t ldv,
                                    uint16_t *Vp);
typedef void mha__attn_fwd_bf16_t(int64_t br, int64_t bc, int64_t n, int64_t nv, float scale,
                                  const uint16_t *A, int64_t lda, const uint16_t *Kp,
                                  const uint16_t *Vp, const mha__attn_tile_mask *mk, float *m,
                                  float *l, float *O, int64_t ldo, float *P, int64_t ldp,
                                  const uint8_t *keep, int64_t ldk);

/* DECODE KERNEL (flash-decoding: a few query rows against a long key/value cache; driver:
 * src/attn/attn_decode.c)
 *
 *   The driver cuts the keys of each sequence into fixed chunks and calls attn_decode once per
 *   chunk for one or more key/value heads and, per head, ALL the query rows that read it (the
 *   group's query heads x the new tokens, rows <= MHA__ATTN_DECODE_ROWS), so each key and value
 *   row is read once; the heads of a call are interleaved block by block, so that with the
 *   [B, S, Hkv, D] cache layout the rows of all heads of a key (one stretch of memory) are
 *   read together.
 *   attn_decode(kv, nh, rows, bc, n, nv, A, lda, sa, K, ldk, sk, V, ldv, sv, md, P, sp):
 *       kv is the element type of K and V: MHA_DTYPE_F32, MHA_DTYPE_BF16 or MHA_DTYPE_F16
 *       (the cache's dtype: one kernel per table, its loops written once, the element type a
 *       parameter); every K and V element is converted to float32 as it is loaded (exact:
 *       kernels/cvt.h), everything else is float32. ldk, sk, ldv, sv count elements of kv.
 *       For heads t < nh, rows r < rows and keys c < bc, with A + t sa the head's scaled query
 *       rows [rows, n] (float32, row stride lda; scale applied before, as the fused forward),
 *       K + t sk its keys [bc, n] and V + t sv its values [bc, nv] read in place from the cache
 *       (any row strides ldk, ldv: no packing), in effect
 *           s = A_r . K_c
 *           s = softcap * tanh(s / softcap)             (md->softcap > 0)
 *           s = s - slope[t rows + r] * |pos[r] - c|     (md->slope != NULL)
 *           s = -inf unless lo[r] <= c < hi[r]           (causality, window, the length)
 *           m_r = max_c s,  l_r = sum_c exp(s - m_r),  O_r = sum_c exp(s - m_r) V_c
 *       into P + t sp: m [rows], l [rows], then O [rows, nv] (OVERWRITTEN: the chunk's partial
 *       softmax, merged by the driver across chunks by log-sum-exp; float32 whatever kv is).
 *       A row with no allowed finite score gets m = -inf, l = 0, O = 0. nh >= 1,
 *       1 <= rows <= MHA__ATTN_DECODE_ROWS, bc >= 1, n >= 1, nv >= 0; 0 <= lo[r] and
 *       hi[r] <= bc. A head's arithmetic never depends on nh, the other heads or the thread,
 *       and the order of its keys' contributions only on bc and the row ranges (not on the
 *       layout), so the driver's fixed chunking makes results bitwise reproducible for any
 *       thread count and any grouping of heads into calls. Every table has one (generic: the
 *       reference, tanhf; SIMD: one skeleton, src/kernels/x86/decode_skel.h, loading through the
 *       mapping's vf_load_v / vf_load_bf16_v / vf_load_f16_v; with AVX512_BF16, a bf16 cache's
 *       scores by vdpbf16ps on md->qb: see mha__attn_decode_mask). A table with the bf16 fused
 *       forward (attn_fwd_bf16 != NULL: AVX512_BF16) computes a bf16 cache's product with V as
 *       that kernel does: O = sum_c bf16(P_c) V_c by vdpbf16ps over pairs of keys (m and l from
 *       the float32 P; V's subnormal elements count as 0). */
#define MHA__ATTN_DECODE_ROWS 64

typedef struct {
    float softcap;      /* > 0: s -> softcap * tanh(s / softcap); 0: off */
    const int64_t *lo;  /* [rows] first allowed key of each row (chunk-local; every head) */
    const int64_t *hi;  /* [rows] one past the last allowed key */
    const float *slope; /* [nh * rows] ALiBi slope of each head's rows, or NULL: no ALiBi */
    const int64_t *pos; /* [rows] with slope: the (chunk-local) key of distance 0 */
    /* a bfloat16 cache (kv MHA_DTYPE_BF16), or NULL: the query rows unscaled, in bfloat16 (head
     * t's at qb + t sqb, row stride ldqb; A = scale x these, rounded), so that a table with
     * bf16 dot products (AVX512_BF16's vdpbf16ps) may compute s = scale (q_r . K_c), each
     * product exact and summed in float32, instead of A_r . K_c (equal up to rounding) */
    const uint16_t *qb;
    int64_t ldqb, sqb;
    float scale;
    /* 1: P already holds the partial (m, l, O) of the same rows over keys before these (a call
     * on the keys before, in a page of their own: paged caches), and the call continues that
     * online softmax over its keys instead of overwriting it (a row none of these keys may
     * see keeps its partial); 0: P is overwritten */
    int accumulate;
    /* prefetch hints, never read: where the keys and values after this call's bc continue
     * (the next page of a paged cache: its key bc at knext + t sk, value at vnext + t sv for
     * head t, elements of kv), or NULL: right after them (a contiguous cache) */
    const void *knext, *vnext;
} mha__attn_decode_mask;

typedef void mha__attn_decode_t(mha_dtype kv, int64_t nh, int64_t rows, int64_t bc, int64_t n,
                                int64_t nv, const float *A, int64_t lda, int64_t sa, const void *K,
                                int64_t ldk, int64_t sk, const void *V, int64_t ldv, int64_t sv,
                                const mha__attn_decode_mask *md, float *P, int64_t sp);
typedef mha__attn_decode_t *mha__attn_decode_fn;

/* One prototype per kernel kind (BLIS's GEMM_UKR_PROT): every ISA's instance is declared with
 * it below (so a definition that drifts from the contract does not compile), and the table
 * holds pointers to it (the mha__*_fn names). */
typedef void mha__attn_scores_t(int64_t br, int64_t bc, int64_t n, float scale, const float *A,
                                int64_t lda, const float *B, int64_t ldb, float *S, int64_t lds);
typedef void mha__attn_softmax_t(int64_t br, int64_t bc, float *S, int64_t lds,
                                 const mha__attn_tile_mask *mk, float *m, float *l, float *alpha);
typedef void mha__attn_probs_t(int64_t br, int64_t bc, float *S, int64_t lds,
                               const mha__attn_tile_mask *mk, const float *lse, float *dcap);
typedef void mha__attn_pv_t(int64_t br, int64_t bc, int64_t n, const float *P, int64_t ldp,
                            const float *X, int64_t ldx, const float *alpha, float *O, int64_t ldo);
typedef void mha__attn_ptv_t(int64_t br, int64_t bc, int64_t n, const float *P, int64_t ldp,
                             const float *X, int64_t ldx, float *G, int64_t ldg);
typedef void mha__attn_dsoftmax_t(int64_t br, int64_t bc, const float *P, int64_t ldp, float *dP,
                                  int64_t lddp, const float *drow, float scale, const float *G);
typedef void mha__attn_kpack_t(int64_t bc, int64_t n, const float *B, int64_t ldb, float *Kp);
typedef void mha__attn_fwd_t(int64_t br, int64_t bc, int64_t n, int64_t nv, float scale,
                             const float *A, int64_t lda, const float *Kp, const float *V,
                             int64_t ldv, const mha__attn_tile_mask *mk, float *m, float *l,
                             float *O, int64_t ldo, float *P, int64_t ldp);
typedef void mha__attn_fwd_drop_t(int64_t br, int64_t bc, int64_t n, int64_t nv, float scale,
                                  const float *A, int64_t lda, const float *Kp, const float *V,
                                  int64_t ldv, const mha__attn_tile_mask *mk, float *m, float *l,
                                  float *O, int64_t ldo, float *P, int64_t ldp, const uint8_t *keep,
                                  int64_t ldk);
typedef void mha__attn_dropout_t(int64_t br, int64_t bc, const mha__attn_dropout *dr, int64_t i0,
                                 int64_t j0, uint8_t *keep, int64_t ldk);
typedef void mha__attn_dropout_apply_t(int64_t br, int64_t bc, const uint8_t *keep, int64_t ldk,
                                       float ks, const float *X, int64_t ldx, float *Y,
                                       int64_t ldy);
typedef void mha__sgemm_t(int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha,
                          const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                          float *C, int64_t ldc);
typedef void mha__gemm_ukr_t(int64_t k, const float *a, const float *b, float alpha, float beta,
                             float *c, int64_t ldc, int m, int n);
typedef void mha__gemm_pack_t(const float *X, int64_t rs, int64_t cs, int64_t rows, int64_t k,
                              int r, float *dst);
typedef void mha__gemm_pack_h_t(const uint16_t *X, mha_dtype dt, int64_t rs, int64_t cs,
                                int64_t rows, int64_t k, int r, float *dst);
typedef void mha__cvt_to_f32_t(mha_dtype dt, const uint16_t *src, float *dst, int64_t n);
typedef void mha__cvt_from_f32_t(mha_dtype dt, const float *src, uint16_t *dst, int64_t n);
typedef void mha__scale_f32_t(int64_t n, float a, const float *x, float *y);
typedef void mha__gemm_bf16_ukr_t(int64_t kp, const uint32_t *a, const uint32_t *b, float alpha,
                                  float beta, float *c, int64_t ldc, int m, int n);
typedef void mha__gemm_bf16_pack_t(const uint16_t *X, int64_t rs, int64_t cs, int64_t rows,
                                   int64_t k, int r, uint32_t *dst);

typedef mha__attn_scores_t *mha__attn_scores_fn;
typedef void mha__attn_scores_kp_t(int64_t br, int64_t bc, int64_t n, float scale, const float *A,
                                   int64_t lda, const float *Kp, float *S, int64_t lds);
typedef mha__attn_softmax_t *mha__attn_softmax_fn;
typedef mha__attn_probs_t *mha__attn_probs_fn;
typedef mha__attn_pv_t *mha__attn_pv_fn;
typedef mha__attn_ptv_t *mha__attn_ptv_fn;
typedef mha__attn_dsoftmax_t *mha__attn_dsoftmax_fn;
typedef mha__attn_kpack_t *mha__attn_kpack_fn;
typedef mha__attn_fwd_t *mha__attn_fwd_fn;
typedef mha__attn_fwd_drop_t *mha__attn_fwd_drop_fn;
typedef mha__attn_dropout_t *mha__attn_dropout_fn;
typedef mha__attn_dropout_apply_t *mha__attn_dropout_apply_fn;
typedef mha__sgemm_t *mha__sgemm_fn;
typedef mha__gemm_ukr_t *mha__gemm_ukr_fn;
typedef mha__gemm_pack_t *mha__gemm_pack_fn;
typedef mha__gemm_pack_h_t *mha__gemm_pack_h_fn;
typedef mha__gemm_bf16_ukr_t *mha__gemm_bf16_ukr_fn;
typedef mha__gemm_bf16_pack_t *mha__gemm_bf16_pack_fn;

typedef struct mha_kernels {
    const char *name; /* "generic", "avx2", "avx512" */
    /* gemm micro-kernel and packing (contract above). */
    int gemm_mr, gemm_nr, gemm_kc, gemm_mc, gemm_nc;
    mha__gemm_ukr_fn gemm_ukr;
    const char *gemm_ukr_name; /* e.g. "mha__gemm_avx512_f32_14x32" */
    mha__gemm_pack_fn gemm_pack;
    const char *gemm_pack_name;
    /* bf16 / f16 operands (contract above): converted to float32 panels, and the optional
     * bf16 pair micro-kernel (NULL: none) with its own blocking */
    mha__gemm_pack_h_fn gemm_pack_h;
    const char *gemm_pack_h_name;
    mha__cvt_to_f32_t *cvt_to_f32; /* 2-byte floats to float32 and back (contract above) */
    mha__cvt_from_f32_t *cvt_from_f32;
    mha__scale_f32_t *scale_f32; /* y = a x (contract above) */
    int gemm_bf16_mr, gemm_bf16_nr, gemm_bf16_kc, gemm_bf16_mc, gemm_bf16_nc;
    mha__gemm_bf16_ukr_fn gemm_bf16_ukr;
    const char *gemm_bf16_ukr_name; /* e.g. "mha__gemm_avx512bf16_bf16_14x32" */
    mha__gemm_bf16_pack_fn gemm_bf16_pack;
    const char *gemm_bf16_pack_name;
    /* attention tile kernels (contract above) and their tile sizes: the backward's, and the
     * optional weights' recompute */
    int64_t attn_br, attn_bc;
    mha__attn_scores_fn attn_scores;
    mha__attn_scores_kp_t *attn_scores_kp;
    mha__attn_probs_fn attn_probs;
    mha__attn_pv_fn attn_pv;
    mha__attn_ptv_fn attn_ptv;
    mha__attn_dsoftmax_fn attn_dsoftmax;
    /* the fused forward (contract above; every table has all three) and its tile sizes */
    mha__attn_kpack_fn attn_kpack;
    mha__attn_fwd_fn attn_fwd;
    int64_t attn_fwd_br, attn_fwd_bc;
    mha__attn_fwd_drop_fn attn_fwd_drop;
    /* Dropout keep decisions of a tile (contract above; every table has one). */
    mha__attn_dropout_fn attn_dropout;
    mha__attn_dropout_apply_fn attn_dropout_apply; /* (contract above; every table has one) */
    /* The flash-decoding chunk kernel (DECODE KERNEL above; every table has one). */
    mha__attn_decode_fn attn_decode;
    /* The bf16 fused forward (BFLOAT16 FUSED FORWARD above; NULL: none) and its panel width */
    mha__attn_kpack_bf16_t *attn_kpack_bf16;
    mha__attn_vpack_bf16_t *attn_vpack_bf16;
    mha__attn_fwd_bf16_t *attn_fwd_bf16;
    int64_t attn_bf16_pw;
    mha__attn_scores_bf16_t *attn_scores_bf16; /* the bf16 backward (BFLOAT16 BACKWARD above) */
    mha__attn_probs_fn attn_probs_bf16;
    mha__attn_pairs_bf16_t *attn_pairs_bf16;
    mha__attn_tpairs_bf16_t *attn_tpairs_bf16;
    mha__attn_pv_bf16_t *attn_pv_bf16;
    mha__attn_ptv_bf16_t *attn_ptv_bf16;
    const char *attn_bf16_name; /* e.g. "mha__attn_fwd_bf16_avx512bf16" */
} mha_kernels;

/* The table for isa, or NULL when that path was not compiled in or this CPU/OS cannot run
 * it (such a table is never even initialized). Never MHA_ISA_AUTO. (kernels.c, which also
 * defines the public mha_isa_supported: built in and runnable here, i.e. a table exists.) */
const mha_kernels *mha__kernels_for(mha_isa isa);
/* The best path that both this build and this machine support: the first of avx512, avx2,
 * generic that has a table. */
mha_isa mha__best_isa(void);

void mha__kernels_init_generic(mha_kernels *k);
#ifdef MHA_HAVE_AVX2
void mha__kernels_init_avx2(mha_kernels *k);
#endif
#ifdef MHA_HAVE_AVX512
void mha__kernels_init_avx512(mha_kernels *k);
#endif
#ifdef MHA_HAVE_AVX512BF16
/* Adds the AVX512_BF16 kernels (the attention's and the gemm's bf16 pair micro-kernel) to an
 * AVX-512 table (only when the CPU has AVX512_BF16). */
void mha__kernels_init_avx512bf16(mha_kernels *k);
mha__attn_kpack_bf16_t mha__attn_kpack_bf16_avx512bf16;
mha__attn_vpack_bf16_t mha__attn_vpack_bf16_avx512bf16;
mha__attn_fwd_bf16_t mha__attn_fwd_bf16_avx512bf16;
mha__attn_scores_bf16_t mha__attn_scores_bf16_avx512bf16;
mha__attn_probs_t mha__attn_probs_bf16_avx512bf16;
mha__attn_pairs_bf16_t mha__attn_pairs_bf16_avx512bf16;
mha__attn_tpairs_bf16_t mha__attn_tpairs_bf16_avx512bf16;
mha__attn_pv_bf16_t mha__attn_pv_bf16_avx512bf16;
mha__attn_ptv_bf16_t mha__attn_ptv_bf16_avx512bf16;
mha__attn_decode_t mha__attn_decode_avx512bf16;
#endif

/* Every ISA's kernels, declared by their kind's prototype. Attention tile kernels:
 * src/kernels/generic/attn.c (the reference, the oracle in tests) and
 * src/kernels/x86/<isa>/attn.c (the skeleton src/kernels/x86/attn_skel.h over the ISA's SIMD
 * mapping). */
#define MHA__ATTN_DECLARE(isa)                                                                     \
    mha__attn_scores_t mha__attn_scores_##isa;                                                     \
    mha__attn_scores_kp_t mha__attn_scores_kp_##isa;                                               \
    mha__attn_probs_t mha__attn_probs_##isa;                                                       \
    mha__attn_pv_t mha__attn_pv_##isa;                                                             \
    mha__attn_ptv_t mha__attn_ptv_##isa;                                                           \
    mha__attn_dsoftmax_t mha__attn_dsoftmax_##isa;                                                 \
    mha__attn_kpack_t mha__attn_kpack_##isa;                                                       \
    mha__attn_fwd_t mha__attn_fwd_##isa;                                                           \
    mha__attn_fwd_drop_t mha__attn_fwd_drop_##isa;                                                 \
    mha__attn_dropout_t mha__attn_dropout_##isa;                                                   \
    mha__attn_dropout_apply_t mha__attn_dropout_apply_##isa;

/* The decode kernel of each ISA (generic/decode.c, x86/<isa>/attn.c via decode_skel.h). */
#define MHA__ATTN_DECODE_DECLARE(isa) mha__attn_decode_t mha__attn_decode_##isa;

MHA__ATTN_DECLARE(generic)
MHA__ATTN_DECODE_DECLARE(generic)
mha__attn_softmax_t mha__attn_softmax_generic; /* the online-softmax step of attn_fwd_generic */
mha__sgemm_t mha__sgemm_generic_f32;
mha__gemm_ukr_t mha__gemm_generic_f32_4x16;  /* the reference micro-kernel, MR x NR = 4 x 16 */
mha__gemm_pack_t mha__gemm_pack_generic_f32; /* any r */
mha__gemm_pack_h_t mha__gemm_pack_generic_h; /* bf16 / f16 -> float32 panels, any r */
mha__cvt_to_f32_t mha__cvt_to_f32_generic;
mha__cvt_from_f32_t mha__cvt_from_f32_generic;
mha__scale_f32_t mha__scale_f32_generic;
#ifdef MHA_HAVE_AVX2
MHA__ATTN_DECLARE(avx2)
MHA__ATTN_DECODE_DECLARE(avx2)
mha__gemm_ukr_t mha__gemm_avx2_f32_6x16;
mha__gemm_pack_h_t mha__gemm_pack_avx2_h;
mha__cvt_to_f32_t mha__cvt_to_f32_avx2;
mha__cvt_from_f32_t mha__cvt_from_f32_avx2;
mha__scale_f32_t mha__scale_f32_avx2;
#endif
#ifdef MHA_HAVE_AVX512
MHA__ATTN_DECLARE(avx512)
MHA__ATTN_DECODE_DECLARE(avx512)
mha__gemm_ukr_t mha__gemm_avx512_f32_14x32;
mha__gemm_pack_t mha__gemm_pack_avx512_f32;
mha__gemm_pack_h_t mha__gemm_pack_avx512_h;
mha__cvt_to_f32_t mha__cvt_to_f32_avx512;
mha__cvt_from_f32_t mha__cvt_from_f32_avx512;
mha__scale_f32_t mha__scale_f32_avx512;
#endif
#ifdef MHA_HAVE_AVX512BF16
mha__gemm_bf16_ukr_t mha__gemm_avx512bf16_bf16_14x32;
mha__gemm_bf16_pack_t mha__gemm_pack_avx512bf16_bf16;
#endif

#endif
