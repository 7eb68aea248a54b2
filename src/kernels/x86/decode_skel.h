/* decode_skel.h - the x86 flash-decoding chunk kernel (mha__attn_decode_<isa>), written once
 * over a SIMD mapping. Contract: DECODE KERNEL in ../kernels.h; the generic kernel
 * (../generic/decode.c) is the reference.
 *
 * Included by each ISA's attn.c after attn_skel.h (it calls that skeleton's pv kernel). Besides
 * the mapping attn_skel.h uses, it needs vf_div, vf_abs, vf_copysign and mask_lt (the decode
 * block at the end of <isa>/simd.h).
 *
 * A chunk's keys in blocks of DEC_KB (only the range some row may use), for all the rows at
 * once, so that every K and V row is read from memory once, in place (a single query never
 * needs packed key tiles; no copy of the cache is made):
 *   1. scores S[rows, kb]: per key, DEC_RB rows at a time, A_r . K_c as an FMA chain over the
 *      head dim (K vector loaded once for the DEC_RB rows) and one horizontal sum
 *   2. per row, vectors of VL keys: softcap, ALiBi, the row's key range (-inf outside), the
 *      block max m', alpha = exp(m - m'), P = exp(s - m'), l = alpha l + sum P
 *   3. O = diag(alpha) O + P V_block: attn_skel.h's pv register blocks (V rows read in place)
 * The next block's K and V rows are prefetched while one is computed: with the strided
 * [B, S, Hkv, D] cache layout consecutive keys of a head are Hkv * D floats apart (a page
 * apart at Hkv * D = 1024), beyond what the hardware's stream prefetchers follow. */
#ifndef MHA_X86_DECODE_SKEL_H
#define MHA_X86_DECODE_SKEL_H

#include "../kernels.h"

#include <math.h>
#include <string.h>

#define DEC_KB 64 /* keys per block: S is MHA__ATTN_DECODE_ROWS x 64 floats (4 KiB) */
#define DEC_RB 4  /* query rows per score block: DEC_RB FMA chains share each K vector */

_Static_assert(DEC_KB % VL == 0, "a block is whole vectors");
_Static_assert(VL <= 16, "dec_iota covers a vector");

static const float dec_iota[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};

/* softcap * tanh(s / softcap), tanh(x) = sign(x) (1 - 2 / (exp(2|x|) + 1)), and for |x| < 0.625
 * (where that form cancels) the odd polynomial x + x^3 (c0 + c1 x^2 + ... + c4 x^8). */
INL vf dec_softcap(vf s, vf cap) {
    const vf x = vf_div(s, cap), ax = vf_abs(x), one = vf_set1(1.0f), x2 = vf_mul(x, x);
    vf big = vf_sub(one, vf_div(vf_set1(2.0f), vf_add(vf_exp(vf_add(ax, ax)), one)));
    vf p = vf_set1(-0.005691985663198097f);
    p = vf_fma(p, x2, vf_set1(0.02062629182327361f));
    p = vf_fma(p, x2, vf_set1(-0.0537353188494469f));
    p = vf_fma(p, x2, vf_set1(0.13331381354360172f));
    p = vf_fma(p, x2, vf_set1(-0.3333327920837057f));
    vf small = vf_fma(vf_mul(x, x2), p, x);
    return vf_mul(cap, vf_select(mask_lt(ax, vf_set1(0.625f)), small, vf_copysign(big, x)));
}

/* S[r * DEC_KB + c] = A_r . K_c for r < rows, c < kb (K rows ldk apart). */
static void dec_scores(int64_t rows, int64_t kb, int64_t n, const float *A, int64_t lda,
                       const float *K, int64_t ldk, float *S) {
    const int64_t nvec = (n + VL - 1) / VL;
    const vmask kl = mask_tail(n - (nvec - 1) * VL);
    for (int64_t r0 = 0; r0 < rows; r0 += DEC_RB) {
        const float *a[DEC_RB];
#pragma GCC unroll 4
        for (int i = 0; i < DEC_RB; i++) a[i] = A + (r0 + i < rows ? r0 + i : rows - 1) * lda;
        for (int64_t c = 0; c < kb; c++) {
            const float *k = K + c * ldk;
            vf acc[DEC_RB];
#pragma GCC unroll 4
            for (int i = 0; i < DEC_RB; i++) acc[i] = vf_zero();
            for (int64_t v = 0; v < nvec; v++) {
                const int last = v == nvec - 1;
                const vf kv = vf_load_v(k + VL * v, last, kl);
#pragma GCC unroll 4
                for (int i = 0; i < DEC_RB; i++)
                    acc[i] = vf_fma(vf_load_v(a[i] + VL * v, last, kl), kv, acc[i]);
            }
#pragma GCC unroll 4
            for (int i = 0; i < DEC_RB; i++)
                if (r0 + i < rows) S[(r0 + i) * DEC_KB + c] = vf_hsum(acc[i]);
        }
    }
}

/* Row r of a block of kb keys from chunk key c0 (s: its DEC_KB scores, the first kb valid):
 * the score definition's softcap, ALiBi and key range, then the online-softmax step (m, l
 * updated, alpha = the factor of the row's earlier O, s = P with exactly 0 where excluded). */
static void dec_row(int64_t r, int64_t c0, int64_t kb, const mha__attn_decode_mask *md, float *s,
                    float *m, float *l, float *alpha) {
    const int64_t kw = (kb + VL - 1) / VL * VL;
    if (md->softcap > 0) {
        const vf cap = vf_set1(md->softcap);
        for (int64_t c = 0; c < kw; c += VL) vf_store(s + c, dec_softcap(vf_load(s + c), cap));
    }
    if (md->slope) { /* s - slope * |pos - key| */
        const vf slope = vf_set1(md->slope[r]), iota = vf_load_v(dec_iota, 0, mask_full());
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

/* Prefetches rows [0, nr) of X (ld apart, n floats each), one cache line at a time. */
INL void dec_prefetch(const float *X, int64_t ld, int64_t nr, int64_t n) {
    for (int64_t c = 0; c < nr; c++)
        for (int64_t x = 0; x < n; x += 16) __builtin_prefetch(X + c * ld + x, 0, 3);
}

void KERNEL(decode)(int64_t rows, int64_t bc, int64_t n, int64_t nv, const float *A, int64_t lda,
                    const float *K, int64_t ldk, const float *V, int64_t ldv,
                    const mha__attn_decode_mask *md, float *m, float *l, float *O, int64_t ldo) {
    float S[MHA__ATTN_DECODE_ROWS * DEC_KB] __attribute__((aligned(64)));
    float alpha[MHA__ATTN_DECODE_ROWS];
    memset(S, 0, sizeof S);
    int64_t cmin = bc, cmax = 0; /* the keys some row may use */
    for (int64_t r = 0; r < rows; r++) {
        m[r] = -INFINITY, l[r] = 0;
        memset(O + r * ldo, 0, sizeof(float) * (size_t)nv);
        if (md->lo[r] >= md->hi[r]) continue;
        if (md->lo[r] < cmin) cmin = md->lo[r];
        if (md->hi[r] > cmax) cmax = md->hi[r];
    }
    for (int64_t c0 = cmin; c0 < cmax; c0 += DEC_KB) {
        const int64_t kb = cmax - c0 < DEC_KB ? cmax - c0 : DEC_KB, c1 = c0 + kb;
        const int64_t nb = cmax - c1 < DEC_KB ? cmax - c1 : DEC_KB; /* the next block */
        dec_prefetch(K + c1 * ldk, ldk, nb, n);
        dec_prefetch(V + c1 * ldv, ldv, nb, nv);
        dec_scores(rows, kb, n, A, lda, K + c0 * ldk, ldk, S);
        for (int64_t r = 0; r < rows; r++) dec_row(r, c0, kb, md, S + r * DEC_KB, m, l, alpha);
        KERNEL(pv)(rows, kb, nv, S, DEC_KB, V + c0 * ldv, ldv, alpha, O, ldo);
    }
}

#endif
