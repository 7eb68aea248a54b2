/* decode_skel.h - the x86 flash-decoding chunk kernel (mha__attn_decode_<isa>), written once
 * over a SIMD mapping. Contract: DECODE KERNEL in ../kernels.h; the generic kernel
 * (../generic/decode.c) is the reference.
 *
 * Included by each ISA's attn.c after attn_skel.h: it uses that skeleton's PW, PER_NV, IOTA
 * and vf_tanh (the softcap computed as the dense kernels compute it) over the same mapping.
 *
 * A chunk's keys in blocks of DEC_KB (only the range some row may use), for all the rows at
 * once, so that every K and V row is read from memory once, in place (a single query never
 * needs packed key tiles; no copy of the cache is made):
 *   1. scores S[rows, kb]: DEC_RB rows x DEC_KS keys at a time, A_r . K_c as FMA chains over
 *      the head dim, reduced by the mapping's vf_sums (DEC_RB x DEC_KS = VL sums at once) or
 *      horizontal sums
 *   2. per row, vectors of VL keys: softcap, ALiBi, the row's key range (-inf outside), the
 *      block max m', alpha = exp(m - m'), P = exp(s - m'), l = alpha l + sum P
 *   3. O = diag(alpha) O + P V_block: DEC_PR rows x DEC_PW columns of O in registers over the
 *      block's keys (V rows read in place)
 * Both products run on the exact number of rows (compile-time blocks of 1 to DEC_RB rows): a
 * query head per key/value head (H = Hkv) costs one FMA chain per key, not a padded block's.
 * Memory order: a float32 cache is read from memory faster than it is computed on, and its
 * step is bound by how well the reads overlap the arithmetic. Each K row and each V row is
 * read whole and in address order (the scores of the first DEC_RB rows take a float32 key's
 * vectors one after another, and the later row blocks, finding the keys in cache, the order
 * with the fewest loads below; the pv product's first pass reads a whole row, DEC_PW columns,
 * for its first DEC_PR rows, and its later passes find the block in cache): reading four keys'
 * rows a line each in turn, or V rows half by half, made the hardware prefetchers give up and
 * cost a fifth to a half of the streaming rate in a plain read of the same pattern. A 2-byte
 * cache is bound by the arithmetic instead (half the bytes per product), so its scores keep the
 * order with the fewest loads: a vector of each of DEC_KS keys, each query vector loaded once
 * for them; with AVX512_BF16 (../avx512bf16/attn.c, DEC_BF16_DOTS) a bf16 cache's scores are
 * instead bf16 dot products of the query rows as they are in q (dec_dots_bf16), half the work,
 * in the same order, and its product with V runs on bf16 pairs of probabilities and of two keys'
 * V rows (dec_pv_blk_bf16), as the bf16 fused forward's: half the instructions of converting V;
 * its V rows whole, as float32's (see DEC_NV).
 * Prefetching (into L2): every load of a K or V vector is paired with a prefetch of the same vector
 * DEC_PF keys later, so that requests to memory go out evenly, a few per computed vector, instead
 * of in bursts of a whole block (which stalled on full miss queues). Without them the step below
 * took 11.3-11.6 ms against 9.3-10.4 (K's matter, V's hardly); with a head's keys contiguous,
 * the passes of P V over a block share each V row's prefetches (see dec_pv). Not into L1: rows
 * a page apart (the strided layout at Hkv * D = 1024) map to the same few L1 sets and would
 * evict the block being computed. The heads of a call take each block of keys in turn, so the rows
 * of all the heads of a key, which the [B, S, Hkv, D] layout stores together, are read close in
 * time; with that layout (sk < ldk) the block's keys are walked in pieces of DEC_KB_HEADS across up
 * to DEC_HG heads, for the scores and again for the product with V, and the prefetch runs one piece
 * ahead (DEC_PF_HEADS), so that the heads' passes stay within a few pages; the softmax still takes
 * the whole block, and a piece's products add to O after the previous piece's as one pass would:
 * the same bits as the contiguous layout.
 * Measured (B=1, H=32, Hkv=8, D=128, S=32768, 2 threads, bench/decode.sh beside the old
 * kernel, rounds alternating): a float32 step about 10.5 -> 9.7 ms with the contiguous cache
 * and 14.6 -> 11 ms with the strided one (16-key blocks; in pieces of the 64-key block: 11.2-11.7
 * -> 10.1-11.3 ms). Pieces of 8 keys instead of 16 (the heads' passes within 8 pages, the
 * prefetch 8 keys on), in one process alternating with 16 (session 12): float32 S = 32768 +7%
 * (0.77 -> 0.83 of the memory's read rate, the contiguous cache 0.86 in the same runs), S =
 * 8192 +7%, bf16 S = 32768 +7%, S = 2048 -4% to +4%; pieces of 4 the same at S = 32768 but 6%
 * slower at S = 2048.
 * Element types: the cache's K and V may hold float32, bfloat16 or half elements. Every
 * function below takes the type as a compile-time constant kt (the kernels are always
 * inlined into one instance per type, as PER_RB does for row counts), and K and V vectors go
 * through dec_load: the mapping's vf_load_v, vf_load_bf16_v or vf_load_f16_v (exact
 * conversions), so the loops exist once. Prefetch distances are the same in BYTES for every
 * type (twice the keys for 2-byte elements, which are consumed twice as fast per byte). */
#ifndef MHA_X86_DECODE_SKEL_H
#define MHA_X86_DECODE_SKEL_H

#include "../kernels.h"

#include <math.h>
#include <string.h>

#define DEC_KB 64      /* keys per block: a head's S is rows x 64 floats (4 KiB at 16) ... */
#define DEC_KB_HEADS 8 /* ... walked in pieces of 8 when the heads interleave, key by key */
#define DEC_HG 8       /* heads whose scores a block keeps at once (a piece walks across them), */
#define DEC_HG_ROWS 16 /* of up to 16 rows each (heads of more rows: fewer at once) */
#define DEC_RB 4       /* query rows per score block */
#define DEC_PF 32      /* prefetch distance in keys, a head's keys contiguous ... */
#define DEC_PF_HEADS 8 /* ... and with the heads interleaved (one piece on) */
/* keys per score step: DEC_RB x DEC_KS accumulators (16 of 32 zmm, 8 of 16 ymm) share each
 * query vector */
#define DEC_KS NVMAX

_Static_assert(DEC_KB % VL == 0 && DEC_KB_HEADS <= DEC_KB, "a block is whole vectors");

/* Bytes per element of a cache of type kt (MHA_DTYPE_F32, BF16 or F16). */
INL int64_t dec_esize(const mha_dtype kt) { return kt == MHA_DTYPE_F32 ? 4 : 2; }

/* Element i of the cache matrix X (type kt) and the VL that follow, as floats (the last vector
 * of a row, last != 0, cut by kl). */
INL vf dec_load(const mha_dtype kt, const void *X, int64_t i, int last, vmask kl) {
    switch (kt) {
    case MHA_DTYPE_BF16: return vf_load_bf16_v((const uint16_t *)X + i, last, kl);
    case MHA_DTYPE_F16: return vf_load_f16_v((const uint16_t *)X + i, last, kl);
    default: return vf_load_v((const float *)X + i, last, kl);
    }
}

/* Prefetch (into L2) of the element i of X (type kt), kpf bytes on. */
INL void dec_prefetch(const mha_dtype kt, const void *X, int64_t i, int64_t kpf) {
    __builtin_prefetch((const char *)X + i * dec_esize(kt) + kpf, 0, 2);
}

/* BLOCK(nr, args) for a compile-time row count nr in 1..DEC_RB (the rows of a block, exact:
 * one query row (multi-head decoding) runs one FMA chain, not DEC_RB copies of it). */
#define PER_RB(nr, BLOCK, ...)                                                                     \
    do {                                                                                           \
        switch (nr) {                                                                              \
        case 1: BLOCK(1, __VA_ARGS__); break;                                                      \
        case 2: BLOCK(2, __VA_ARGS__); break;                                                      \
        case 3: BLOCK(3, __VA_ARGS__); break;                                                      \
        default: BLOCK(4, __VA_ARGS__); break;                                                     \
        }                                                                                          \
    } while (0)
_Static_assert(DEC_RB == 4, "PER_RB covers 1..4 rows");
_Static_assert(DEC_RB *DEC_KS == VL, "a full score step's sums are one transposed vector");

/* S[r * DEC_KB + c0 + j] = scale x the sum of the lanes of acc[r][j] (r < nr, j < nk): the VL
 * sums at once (nr nk = VL) or one horizontal sum each. */
INL void dec_sums_store(const int nr, const int nk, vf acc[DEC_RB][DEC_KS], int64_t c0, float scale,
                        float *S) {
    if (nr * nk == VL) { /* the VL sums at once */
        vf t[VL];
#pragma GCC unroll 4
        for (int i = 0; i < nr; i++)
#pragma GCC unroll 4
            for (int j = 0; j < nk; j++) t[i * nk + j] = acc[i][j];
        float out[VL] __attribute__((aligned(VALIGN)));
        vf_store(out, vf_sums(t));
#pragma GCC unroll 4
        for (int i = 0; i < nr; i++)
#pragma GCC unroll 4
            for (int j = 0; j < nk; j++) S[i * DEC_KB + c0 + j] = scale * out[i * nk + j];
        return;
    }
#pragma GCC unroll 4
    for (int i = 0; i < nr; i++)
#pragma GCC unroll 4
        for (int j = 0; j < nk; j++) S[i * DEC_KB + c0 + j] = scale * vf_hsum(acc[i][j]);
}

/* S[r * DEC_KB + c] = A_r . K_c for the nr rows A_r (lda apart) and the nk keys K_c (ldk
 * elements of type kt apart) from c0: nr x nk FMA chains over the head dim, each key vector
 * loaded once for the nr rows, then the VL sums at once or one horizontal sum each. Float32
 * keys one after another, each row in address order (the query vectors loaded for each key);
 * 2-byte keys a vector of each in turn (each query vector loaded once for the nk keys): see the
 * top of the file. kpf: the prefetch distance in bytes (0: none). */
/* dec_dots' step for 2-byte keys at vector v of the head dim (the row's last when last, cut by
 * kl): a vector of each of the nk keys in turn, each query vector loaded once for them. */
INL void dec_vec_step(const mha_dtype kt, const int nr, const int nk, int64_t c0, int64_t v,
                      int last, vmask kl, const float *A, int64_t lda, const void *K, int64_t ldk,
                      int64_t kpf, vf acc[DEC_RB][DEC_KS]) {
    vf kv[DEC_KS];
#pragma GCC unroll 4
    for (int j = 0; j < nk; j++) {
        const int64_t at = (c0 + j) * ldk + VL * v;
        kv[j] = dec_load(kt, K, at, last, kl);
        if (kpf) dec_prefetch(kt, K, at, kpf);
    }
#pragma GCC unroll 4
    for (int i = 0; i < nr; i++) {
        const vf a = vf_load_v(A + i * lda + VL * v, last, kl);
#pragma GCC unroll 4
        for (int j = 0; j < nk; j++) acc[i][j] = vf_fma(a, kv[j], acc[i][j]);
    }
}

/* S[r * DEC_KB + c] = A_r . K_c for the nr rows A_r (lda apart) and the nk keys K_c (ldk
 * elements of type kt apart) from c0: nr x nk FMA chains over the head dim, each key vector
 * loaded once for the nr rows, then the VL sums at once or one horizontal sum each. Float32
 * keys one after another, each row in address order (the query vectors loaded for each key);
 * 2-byte keys a vector of each in turn (each query vector loaded once for the nk keys), their
 * whole vectors without masks and a cut last one with its mask (a mask chosen per step cost a
 * tenth of a half cache's step; a float32 cache's step, from memory, ran a few percent slower
 * without them, though faster in cache): see the top of the file. kpf: the prefetch distance
 * in bytes (0: none). */
INL void dec_dots(const mha_dtype kt, const int nr, const int nk, int64_t c0, int64_t n,
                  const float *A, int64_t lda, const void *K, int64_t ldk, int64_t kpf, int cached,
                  float *S) {
    const int64_t nvec = (n + VL - 1) / VL;
    const vmask kl = mask_tail(n - (nvec - 1) * VL);
    vf acc[DEC_RB][DEC_KS];
#pragma GCC unroll 4
    for (int i = 0; i < nr; i++)
#pragma GCC unroll 4
        for (int j = 0; j < nk; j++) acc[i][j] = vf_zero();
    if (kt == MHA_DTYPE_F32 && !cached) {
#pragma GCC unroll 4
        for (int j = 0; j < nk; j++) /* key by key, each row in address order */
            for (int64_t v = 0; v < nvec; v++) {
                const int last = v == nvec - 1;
                const int64_t at = (c0 + j) * ldk + VL * v;
                const vmask kv = last ? kl : mask_full(); /* masked loads, no branch */
                const vf k = vf_mload((const float *)K + at, kv);
                if (kpf) dec_prefetch(kt, K, at, kpf); /* the same vector kpf bytes on (L2) */
#pragma GCC unroll 4
                for (int i = 0; i < nr; i++)
                    acc[i][j] = vf_fma(vf_mload(A + i * lda + VL * v, kv), k, acc[i][j]);
            }
    } else {
        const int64_t nfull = n / VL;
        for (int64_t v = 0; v < nfull; v++)
            dec_vec_step(kt, nr, nk, c0, v, 0, kl, A, lda, K, ldk, kpf, acc);
        if (nfull < nvec) dec_vec_step(kt, nr, nk, c0, nfull, 1, kl, A, lda, K, ldk, kpf, acc);
    }
    dec_sums_store(nr, nk, acc, c0, 1.0f, S);
}

#ifdef DEC_BF16_DOTS
/* dec_dots for a bfloat16 cache against the same query rows in bfloat16, unscaled (Q, ldq
 * apart): pairs of elements by the mapping's vf_dot2 (vdpbf16ps: each product exact, summed
 * in float32; a subnormal bf16 element counts as 0), then times scale (mha__attn_decode_mask's
 * qb). A vector of each key in turn, each query vector loaded once for the nk keys (key by key,
 * the query vectors loaded again for each key, a step with the cache in L3 took a fifth longer;
 * from memory the two orders ran at the same speed). */
/* dec_dots_bf16's step at element x of the head dim: ne (<= 2 VL) elements of each key and row */
INL void dec_dots_bf16_step(const int nr, const int nk, int64_t c0, int64_t x, int64_t ne,
                            const uint16_t *Q, int64_t ldq, const uint16_t *K, int64_t ldk,
                            int64_t kpf, vf acc[DEC_RB][DEC_KS]) {
    vb k[DEC_KS];
#pragma GCC unroll 4
    for (int j = 0; j < nk; j++) {
        k[j] = vb_load_elems(K + (c0 + j) * ldk + x, ne);
        if (kpf) dec_prefetch(MHA_DTYPE_BF16, K, (c0 + j) * ldk + x, kpf);
    }
#pragma GCC unroll 4
    for (int i = 0; i < nr; i++) {
        const vb q = vb_load_elems(Q + i * ldq + x, ne);
#pragma GCC unroll 4
        for (int j = 0; j < nk; j++) acc[i][j] = vf_dot2(acc[i][j], q, k[j]);
    }
}

INL void dec_dots_bf16(const int nr, const int nk, int64_t c0, int64_t n, const uint16_t *Q,
                       int64_t ldq, float scale, const uint16_t *K, int64_t ldk, int64_t kpf,
                       float *S) {
    vf acc[DEC_RB][DEC_KS];
#pragma GCC unroll 4
    for (int i = 0; i < nr; i++)
#pragma GCC unroll 4
        for (int j = 0; j < nk; j++) acc[i][j] = vf_zero();
    int64_t x = 0;
    for (; x + 2 * VL <= n; x += 2 * VL) /* whole vectors: no mask to choose */
        dec_dots_bf16_step(nr, nk, c0, x, 2 * VL, Q, ldq, K, ldk, kpf, acc);
    if (x < n) dec_dots_bf16_step(nr, nk, c0, x, n - x, Q, ldq, K, ldk, kpf, acc);
    dec_sums_store(nr, nk, acc, c0, scale, S);
}
#endif

/* The scores of nr rows against the block's kb keys: DEC_KS keys at a time, then one by one
 * (Q: the rows in bfloat16 for a bf16 cache, see dec_dots_bf16, or NULL). */
INL void dec_scores_blk(const int nr, const mha_dtype kt, int64_t kb, int64_t n, const float *A,
                        int64_t lda, const uint16_t *Q, int64_t ldq, float scale, const void *K,
                        int64_t ldk, int64_t kpf, int cached, float *S) {
    int64_t c = 0;
#ifdef DEC_BF16_DOTS
    if (kt == MHA_DTYPE_BF16 && Q) {
        for (; c + DEC_KS <= kb; c += DEC_KS)
            dec_dots_bf16(nr, DEC_KS, c, n, Q, ldq, scale, K, ldk, kpf, S);
        for (; c < kb; c++) dec_dots_bf16(nr, 1, c, n, Q, ldq, scale, K, ldk, kpf, S);
        return;
    }
#endif
    (void)Q, (void)ldq, (void)scale;
    for (; c + DEC_KS <= kb; c += DEC_KS)
        dec_dots(kt, nr, DEC_KS, c, n, A, lda, K, ldk, kpf, cached, S);
    for (; c < kb; c++) dec_dots(kt, nr, 1, c, n, A, lda, K, ldk, kpf, cached, S);
}
#define DEC_SCORES_BLK(nr, ...) dec_scores_blk(nr, __VA_ARGS__)

/* The scores of every row, DEC_RB rows at a time. */
INL void dec_scores(const mha_dtype kt, int64_t rows, int64_t kb, int64_t n, const float *A,
                    int64_t lda, const uint16_t *Q, int64_t ldq, float scale, const void *K,
                    int64_t ldk, int64_t kpf, float *S) {
    for (int64_t r0 = 0; r0 < rows; r0 += DEC_RB) {
        const int64_t nr = rows - r0 < DEC_RB ? rows - r0 : DEC_RB;
        /* the rows' first block prefetches and reads the keys from memory in address order;
         * the others find them in cache and take a float32 cache's keys in the order with the
         * fewest loads, as a 2-byte cache's (the same products in the same order: the bits) */
        PER_RB(nr, DEC_SCORES_BLK, kt, kb, n, A + r0 * lda, lda, Q ? Q + r0 * ldq : NULL, ldq,
               scale, K, ldk, r0 ? 0 : kpf, r0 > 0, S + r0 * DEC_KB);
    }
}

/* The pv product's panels for a float32 cache and for a bf16 cache's pairs (vdpbf16ps): DEC_NV
 * vectors (a whole row at head dim 128 with AVX-512, 32 columns with AVX2), DEC_PR rows at a
 * time (DEC_PR x DEC_NV accumulators, half the registers), so that every pass over a block
 * reads each V row whole. A half cache, bound by its conversions, takes PW columns for up to
 * DEC_RB rows at a time (each V vector converted once for more rows). bf16 pairs took those
 * too, until session 11: whole rows read a bf16 cache from memory 10-13% faster (in-process
 * A/B, B=1 H=32 Hkv=8 D=128 S=32768, 100-150 rounds: 0.53 -> 0.59 of a quiet memory's
 * bandwidth, 0.70 -> 0.78 of a shared one's), though a cache in L3 (S = 2048) 10% slower. */
#define DEC_NV SKEL_CAT(DEC_NV_, NVMAX) /* 2 NVMAX, a literal for PER_UPTO */
#define DEC_NV_2 4
#define DEC_NV_4 8
#define DEC_PR 2
#define DEC_PW (VL * DEC_NV)

/* BLOCK(nv, args) for a compile-time nv in 1..DEC_NV. */
#define PER_DNV PER_UPTO(DEC_NV)

/* acc = diag(alpha) O[nr, VL nv] (the last vector cut by kl): a pv block's accumulators */
INL void dec_o_load(const int nr, const int nv, const float *alpha, const float *O, int64_t ldo,
                    vmask kl, vf acc[DEC_RB][DEC_NV]) {
#pragma GCC unroll 4
    for (int i = 0; i < nr; i++) {
        const vf a = vf_set1(alpha[i]);
#pragma GCC unroll 8
        for (int j = 0; j < nv; j++)
            acc[i][j] = vf_mul(a, vf_load_v(O + i * ldo + VL * j, j == nv - 1, kl));
    }
}

/* O[nr, VL nv] = acc (the last vector cut by kl) */
INL void dec_o_store(const int nr, const int nv, vf acc[DEC_RB][DEC_NV], float *O, int64_t ldo,
                     vmask kl) {
#pragma GCC unroll 4
    for (int i = 0; i < nr; i++)
#pragma GCC unroll 8
        for (int j = 0; j < nv; j++) vf_store_v(O + i * ldo + VL * j, j == nv - 1, kl, acc[i][j]);
}

/* O[nr, VL nv] (the last vector cut by kl) = diag(alpha) O + P[nr, kb] V[kb, VL nv]: nr x nv
 * accumulators in registers over the block's keys (one V row load per key and vector, one
 * broadcast per row); the exact rows, unlike attn_skel.h's MR-row pv blocks. vpf: the prefetch
 * distance in bytes (0: none) of the row's vectors pf0 .. pf1 - 1 (see dec_pv). */
INL void dec_pv_blk(const int nr, const int nv, const mha_dtype kt, int64_t kb, const float *P,
                    const void *V, int64_t ldv, int64_t vpf, const float *alpha, float *O,
                    int64_t ldo, vmask kl, int pf0, int pf1) {
    vf acc[DEC_RB][DEC_NV];
    dec_o_load(nr, nv, alpha, O, ldo, kl, acc);
    for (int64_t c = 0; c < kb; c++) {
        vf x[DEC_NV];
#pragma GCC unroll 8
        for (int j = 0; j < nv; j++) {
            x[j] = dec_load(kt, V, c * ldv + VL * j, j == nv - 1, kl);
            if (vpf && j >= pf0 && j < pf1) dec_prefetch(kt, V, c * ldv + VL * j, vpf);
        }
#pragma GCC unroll 4
        for (int i = 0; i < nr; i++) {
            const vf p = vf_bcast(P + i * DEC_KB + c);
#pragma GCC unroll 8
            for (int j = 0; j < nv; j++) acc[i][j] = vf_fma(p, x[j], acc[i][j]);
        }
    }
    dec_o_store(nr, nv, acc, O, ldo, kl);
}
#define DEC_PV_NV(nv, nr, ...) dec_pv_blk(nr, nv, __VA_ARGS__)
#define DEC_PV_NR(nr, nv, ...) PER_NV(nv, DEC_PV_NV, nr, __VA_ARGS__)

#ifdef DEC_BF16_DOTS
/* dec_pv_blk for a bfloat16 cache with bf16 dot products: O = diag(alpha) O + bf16(P) V over
 * pairs of keys by vf_dot2 (vdpbf16ps), as the bf16 fused forward's product with V. P2 holds
 * each row's probabilities as bf16 pairs (probs_to_pairs: keys 2q and 2q + 1 in the 32 bits at
 * P2 + i DEC_KB + q, an odd kb's last pair with 0); a pair of keys' V rows are paired lane by
 * lane as they are loaded (an odd kb's last row with 0: the row after the block is never read).
 * Half the instructions of converting V to float32 for FMAs; V's subnormal elements count as 0
 * (vdpbf16ps). */
INL void dec_pv_blk_bf16(const int nr, const int nv, int64_t kb, const float *P2, const uint16_t *V,
                         int64_t ldv, int64_t vpf, const float *alpha, float *O, int64_t ldo,
                         vmask kl, int pf0, int pf1) {
    vf acc[DEC_RB][DEC_NV];
    dec_o_load(nr, nv, alpha, O, ldo, kl, acc);
    for (int64_t c = 0; c < kb; c += 2) {
        const uint16_t *v0 = V + c * ldv, *v1 = c + 1 < kb ? v0 + ldv : NULL;
        vb x[DEC_NV];
#pragma GCC unroll 8
        for (int j = 0; j < nv; j++) {
            x[j] =
                vb_pair_rows(v0 + VL * j, v1 ? v1 + VL * j : NULL, j == nv - 1 ? kl : mask_full());
            if (vpf && j >= pf0 && j < pf1) {
                dec_prefetch(MHA_DTYPE_BF16, V, c * ldv + VL * j, vpf);
                dec_prefetch(MHA_DTYPE_BF16, V, (c + 1) * ldv + VL * j, vpf);
            }
        }
#pragma GCC unroll 4
        for (int i = 0; i < nr; i++) {
            const vb p = vb_bcast((const uint16_t *)(P2 + i * DEC_KB + c / 2));
#pragma GCC unroll 8
            for (int j = 0; j < nv; j++) acc[i][j] = vf_dot2(acc[i][j], p, x[j]);
        }
    }
    dec_o_store(nr, nv, acc, O, ldo, kl);
}
#define DEC_PV2_NV(nv, nr, ...) dec_pv_blk_bf16(nr, nv, __VA_ARGS__)
#define DEC_PAIRS(kt) ((kt) == MHA_DTYPE_BF16) /* P V on bf16 pairs */
#else
#define DEC_PAIRS(kt) 0
#endif

/* O[rows, nv] = diag(alpha) O + P[rows, kb] V[kb, nv] (V of type kt), panel by panel (see
 * DEC_NV). Prefetching: with share (a head's keys contiguous), a whole-row panel's passes
 * (DEC_PR rows each) share the row's vectors, pass p of np prefetching its p-th share of them,
 * so that requests to memory go out through every pass instead of a whole row's per key in the
 * first and none in the others (which, from memory, left the first pass waiting on miss
 * buffers and the others draining them: B=1 H=32 Hkv=8 D=128 S=32768, about 100 rounds each,
 * 0.60 -> 0.65 of a quiet memory's bandwidth, 0.80 -> 0.83 of a shared one's; the strided
 * layout's pieces of 16 keys ran 2-4% slower with it, so they keep the first pass's); else,
 * and for a half cache's panel, the first pass prefetches them all. */
INL void dec_pv(const mha_dtype kt, int64_t rows, int64_t kb, int64_t nv, const float *P,
                const void *V, int64_t ldv, int64_t vpf, const float *alpha, float *O, int64_t ldo,
                int share) {
    _Static_assert(DEC_PR == 2 && DEC_NV >= NVMAX, "float32 panels are 1 or 2 rows");
    /* whole rows: float32, and bf16 pairs (whose passes load as many bytes of V per product as
     * float32's); else (f16, converted) PW columns for up to DEC_RB rows */
    const int wide = kt == MHA_DTYPE_F32 || DEC_PAIRS(kt), spread = wide && share;
    const int64_t pw = wide ? DEC_PW : PW, pr = wide ? DEC_PR : DEC_RB;
    for (int64_t x0 = 0; x0 < nv; x0 += pw) {
        const int64_t w = nv - x0 < pw ? nv - x0 : pw, nvec = (w + VL - 1) / VL;
        const vmask kl = mask_tail(w - (nvec - 1) * VL);
        const void *Vx = (const char *)V + x0 * dec_esize(kt);
        const int64_t np = (rows + pr - 1) / pr;
        for (int64_t r0 = 0; r0 < rows; r0 += pr) {
            const int64_t nr = rows - r0 < pr ? rows - r0 : pr, p = r0 / pr;
            const int64_t pf = spread || r0 == 0 ? vpf : 0;
            const int pf0 = spread ? (int)(nvec * p / np) : 0;
            const int pf1 = spread ? (int)(nvec * (p + 1) / np) : (int)nvec;
            const float *Pr = P + r0 * DEC_KB, *al = alpha + r0;
            float *Or = O + r0 * ldo + x0;
#ifdef DEC_BF16_DOTS
            if (DEC_PAIRS(kt)) { /* P: pairs (see dec_pv_blk_bf16) */
                if (nr == 1)
                    PER_DNV(nvec, DEC_PV2_NV, 1, kb, Pr, Vx, ldv, pf, al, Or, ldo, kl, pf0, pf1);
                else PER_DNV(nvec, DEC_PV2_NV, 2, kb, Pr, Vx, ldv, pf, al, Or, ldo, kl, pf0, pf1);
                continue;
            }
#endif
            if (!wide)
                PER_RB(nr, DEC_PV_NR, nvec, kt, kb, Pr, Vx, ldv, pf, al, Or, ldo, kl, pf0, pf1);
            else if (nr == 1)
                PER_DNV(nvec, DEC_PV_NV, 1, kt, kb, Pr, Vx, ldv, pf, al, Or, ldo, kl, pf0, pf1);
            else PER_DNV(nvec, DEC_PV_NV, 2, kt, kb, Pr, Vx, ldv, pf, al, Or, ldo, kl, pf0, pf1);
        }
    }
}

/* Row r of a block of kb keys from chunk key c0 (s: its DEC_KB scores, the first kb valid):
 * the score definition's softcap, ALiBi and key range, then the online-softmax step (m, l
 * updated, alpha = the factor of the row's earlier O, s = P with exactly 0 where excluded). */
static void dec_row(int64_t r, int64_t c0, int64_t kb, const mha__attn_decode_mask *md, float *s,
                    float *m, float *l, float *alpha) {
    const int64_t kw = (kb + VL - 1) / VL * VL;
    if (md->softcap > 0) { /* as attn_skel.h's score_mod */
        const vf cap = vf_set1(md->softcap), inv = vf_set1(1.0f / md->softcap);
        for (int64_t c = 0; c < kw; c += VL)
            vf_store(s + c, vf_mul(cap, vf_tanh(vf_mul(vf_load(s + c), inv))));
    }
    if (md->slope) { /* s - slope * |pos - key| */
        const vf slope = vf_set1(md->slope[r]), iota = vf_load(IOTA);
        for (int64_t c = 0; c < kw; c += VL) {
            vf d = vf_abs(vf_sub(vf_set1((float)(md->pos[r] - c0 - c)), iota));
            vf_store(s + c, vf_sub(vf_load(s + c), vf_mul(slope, d)));
        }
    }
    int64_t a0 = md->lo[r] - c0, a1 = md->hi[r] - c0;
    a0 = a0 < 0 ? 0 : a0 > kw ? kw : a0;
    a1 = a1 < a0 ? a0 : a1 > kb ? kb : a1;
    for (int64_t c = 0; c < a0; c++) s[c] = -INFINITY;
    for (int64_t c = a1; c < kw; c++) s[c] = -INFINITY;
    vf vm = vf_set1(-INFINITY);
    for (int64_t c = 0; c < kw; c += VL) vm = vf_max(vf_load(s + c), vm);
    const float mx = vf_hmax(vm), mn = mx > m[r] ? mx : m[r];
    if (mn == -INFINITY) { /* nothing allowed (or every score -inf) so far */
        for (int64_t c = 0; c < kw; c++) s[c] = 0;
        alpha[r] = 1;
        return;
    }
    const vf vmn = vf_set1(mn);
    vf sum = vf_zero();
    for (int64_t c = 0; c < kw; c += VL) {
        vf p = vf_exp(vf_sub(vf_load(s + c), vmn));
        vf_store(s + c, p);
        sum = vf_add(sum, p);
    }
    alpha[r] = m[r] == -INFINITY ? 0.0f : expf(m[r] - mn);
    l[r] = alpha[r] * l[r] + vf_hsum(sum);
    m[r] = mn;
}

/* The kernel for keys and values of type kt (inlined into one instance per type below). */
INL void dec_kernel(const mha_dtype kt, int64_t nh, int64_t rows, int64_t bc, int64_t n, int64_t nv,
                    const float *A, int64_t lda, int64_t sa, const void *K, int64_t ldk, int64_t sk,
                    const void *V, int64_t ldv, int64_t sv, const mha__attn_decode_mask *md,
                    float *P, int64_t sp) {
    /* the scores and factors of up to hgm heads (a block's keys walked across them): DEC_HG
     * heads of up to DEC_HG_ROWS rows each, fewer heads of more rows, in one scratch (32 KiB) */
    float S[DEC_HG * DEC_HG_ROWS * DEC_KB] __attribute__((aligned(64)));
    float alpha[DEC_HG * DEC_HG_ROWS], one[MHA__ATTN_DECODE_ROWS];
    const int64_t fit = rows <= DEC_HG_ROWS ? DEC_HG : DEC_HG * DEC_HG_ROWS / rows;
    const int64_t hgm = nh < fit ? nh : fit;
    memset(S, 0, sizeof(float) * (size_t)(hgm * rows * DEC_KB));
    for (int64_t r = 0; r < rows; r++) one[r] = 1;
    int64_t cmin = bc, cmax = 0; /* the keys some row may use (the same for every head) */
    for (int64_t r = 0; r < rows; r++) {
        if (md->lo[r] >= md->hi[r]) continue;
        if (md->lo[r] < cmin) cmin = md->lo[r];
        if (md->hi[r] > cmax) cmax = md->hi[r];
    }
    for (int64_t t = 0; t < nh && !md->accumulate; t++) { /* else: continued (dec_row) */
        float *m = P + t * sp;
        for (int64_t r = 0; r < rows; r++) m[r] = -INFINITY, m[rows + r] = 0;
        memset(m + 2 * rows, 0, sizeof(float) * (size_t)(rows * nv));
    }
    /* the walk of a block's keys (see the top of the file); prefetch distances in bytes, those of
     * a float32 cache whatever kt is (prefetches past the chunk fetch the next one's keys, or
     * nothing: a prefetch never faults) */
    const int heads = sk < ldk;
    const int64_t pf = heads ? DEC_PF_HEADS : DEC_PF;
    const int64_t kpf = pf * ldk * (int64_t)sizeof(float), vpf = pf * ldv * (int64_t)sizeof(float);
    const int64_t es = dec_esize(kt);
    /* a paged cache's next page (md->knext, vnext): the prefetches of a piece whose keys pfk
     * on are past bc go to that page's rows instead (pfk on in it, or from its first row when
     * pfk >= bc), the pointers' distance folded into the byte offset; a block then goes in
     * pieces of pfk keys, so that a piece's prefetches are all in one page (the same bits:
     * pieces never change the results, see the top of the file) */
    const int64_t pfk = pf * (int64_t)sizeof(float) / es, nshift = pfk < bc ? pfk - bc : 0;
    const int64_t piece = heads ? DEC_KB_HEADS : md->knext && pfk < DEC_KB ? pfk : DEC_KB;
    const int64_t kpn = md->knext ? ((intptr_t)md->knext - (intptr_t)K) + nshift * ldk * es : kpf,
                  vpn = md->vnext ? ((intptr_t)md->vnext - (intptr_t)V) + nshift * ldv * es : vpf;
    for (int64_t c0 = cmin; c0 < cmax; c0 += DEC_KB) {
        const int64_t kb = cmax - c0 < DEC_KB ? cmax - c0 : DEC_KB;
        for (int64_t t0 = 0; t0 < nh; t0 += hgm) {
            const int64_t hg = nh - t0 < hgm ? nh - t0 : hgm;
            for (int64_t p0 = 0; p0 < kb; p0 += piece) {
                const int64_t pk = kb - p0 < piece ? kb - p0 : piece;
                for (int64_t t = t0; t < t0 + hg; t++)
                    dec_scores(kt, rows, pk, n, A + t * sa, lda,
                               md->qb ? md->qb + t * md->sqb : NULL, md->ldqb, md->scale,
                               (const char *)K + (t * sk + (c0 + p0) * ldk) * es, ldk,
                               c0 + p0 + pfk < bc ? kpf : kpn, S + (t - t0) * rows * DEC_KB + p0);
            }
            for (int64_t t = t0; t < t0 + hg; t++) {
                float *m = P + t * sp, *l = m + rows;
                mha__attn_decode_mask mh = *md;
                if (md->slope) mh.slope = md->slope + t * rows;
                for (int64_t r = 0; r < rows; r++) {
                    dec_row(r, c0, kb, &mh, S + ((t - t0) * rows + r) * DEC_KB, m, l,
                            alpha + (t - t0) * rows);
#ifdef DEC_BF16_DOTS
                    if (DEC_PAIRS(kt)) probs_to_pairs(S + ((t - t0) * rows + r) * DEC_KB, 0, kb);
#endif
                }
            }
            for (int64_t p0 = 0; p0 < kb; p0 += piece) {
                const int64_t pk = kb - p0 < piece ? kb - p0 : piece;
                for (int64_t t = t0; t < t0 + hg; t++)
                    dec_pv(kt, rows, pk, nv,
                           S + (t - t0) * rows * DEC_KB + (DEC_PAIRS(kt) ? p0 / 2 : p0),
                           (const char *)V + (t * sv + (c0 + p0) * ldv) * es, ldv,
                           c0 + p0 + pfk < bc ? vpf : vpn, p0 ? one : alpha + (t - t0) * rows,
                           P + t * sp + 2 * rows, nv, !heads);
            }
        }
    }
}

/* One instance per element type (the contract's kv argument), the loops above shared. */
#define DEC_ARGS nh, rows, bc, n, nv, A, lda, sa, K, ldk, sk, V, ldv, sv, md, P, sp
#define DEC_INSTANCE(name, kt)                                                                     \
    static void name(int64_t nh, int64_t rows, int64_t bc, int64_t n, int64_t nv, const float *A,  \
                     int64_t lda, int64_t sa, const void *K, int64_t ldk, int64_t sk,              \
                     const void *V, int64_t ldv, int64_t sv, const mha__attn_decode_mask *md,      \
                     float *P, int64_t sp) {                                                       \
        dec_kernel(kt, DEC_ARGS);                                                                  \
    }
DEC_INSTANCE(dec_f32, MHA_DTYPE_F32)
DEC_INSTANCE(dec_bf16, MHA_DTYPE_BF16)
DEC_INSTANCE(dec_f16, MHA_DTYPE_F16)

void KERNEL(decode)(mha_dtype kv, int64_t nh, int64_t rows, int64_t bc, int64_t n, int64_t nv,
                    const float *A, int64_t lda, int64_t sa, const void *K, int64_t ldk, int64_t sk,
                    const void *V, int64_t ldv, int64_t sv, const mha__attn_decode_mask *md,
                    float *P, int64_t sp) {
    switch (kv) {
    case MHA_DTYPE_BF16: dec_bf16(DEC_ARGS); break;
    case MHA_DTYPE_F16: dec_f16(DEC_ARGS); break;
    default: dec_f32(DEC_ARGS); break;
    }
}
#undef DEC_ARGS
#undef DEC_INSTANCE

#endif
