/* simd.h - the AVX-512 mapping of the x86 kernel skeleton (../attn_skel.h): only what is
 * ISA-specific. 16-float vectors (zmm), 32 registers, masks in mask registers (__mmask16):
 * masked loads zero the lanes outside the mask and never read them, masked stores never
 * write them, masked operations (add, mov) keep the other operand there. */
#ifndef MHA_AVX512_SIMD_H
#define MHA_AVX512_SIMD_H

#include "../../kernels.h"
#include "vexp.h"

#include <immintrin.h>

#define SIMD_ISA avx512 /* the suffix of the kernels the skeleton defines */
#define VL 16           /* floats per vector */
#define VALIGN 64       /* bytes */
#define MR 6            /* rows of a register block */
#define NVMAX 4         /* vectors per row of a register block: 24 accumulators, 4 loads, 1 bcast */
#define PANEL_OWN_FN 1  /* the float32 score products: functions of their own */
#define INL static inline __attribute__((always_inline))

typedef __m512 vf;       /* VL floats */
typedef __mmask16 vmask; /* VL lanes */
typedef __m512i vi;      /* VL / 2 lanes of 64 bits (Philox) */

/* Lanes i < w set (w clamped to [0, VL]). */
INL vmask mask_tail(int64_t w) {
    return w >= 16 ? (__mmask16)0xffff : w <= 0 ? (__mmask16)0 : (__mmask16)((1u << w) - 1);
}
INL vmask mask_full(void) { return (__mmask16)0xffff; }
INL vmask mask_and(vmask a, vmask b) { return a & b; }
INL vmask mask_andnot(vmask a, vmask b) { return a & (vmask)~b; } /* a and not b */

INL vf vf_zero(void) { return _mm512_setzero_ps(); }
INL vf vf_set1(float x) { return _mm512_set1_ps(x); }
INL vf vf_bcast(const float *p) { return _mm512_set1_ps(*p); }
INL vf vf_load(const float *p) { return _mm512_load_ps(p); } /* aligned */
INL void vf_store(float *p, vf v) { _mm512_store_ps(p, v); }
INL vf vf_mload(const float *p, vmask k) { return _mm512_maskz_loadu_ps(k, p); }
INL void vf_mstore(float *p, vmask k, vf v) { _mm512_mask_storeu_ps(p, k, v); }
/* A vector of a row whose last vector (last != 0) is cut by kl. A whole vector by a plain
 * load or store: a masked one with every lane set costs more (AMD Zen 4: the fused forward
 * 4-6% faster at N = 256 and 1024 with plain ones, in-process A/B), and the compiler keeps
 * the branch where last is known. */
INL vf vf_load_v(const float *p, int last, vmask kl) {
    if (last) return _mm512_maskz_loadu_ps(kl, p);
    return _mm512_loadu_ps(p);
}
INL void vf_store_v(float *p, int last, vmask kl, vf v) {
    if (last) _mm512_mask_storeu_ps(p, kl, v);
    else _mm512_storeu_ps(p, v);
}

/* The same for VL 2-byte cache elements (bfloat16 / IEEE half) at p, as floats: exact, the
 * bits of ../../cvt.h's scalar conversions (bf16: the 16 bits shifted to the top; half:
 * vcvtph2ps, which keeps subnormals and quiets NaNs as mha__f16_to_f32 does). Lanes outside a
 * cut vector: 0, never read. */
INL __m256i vh_load_v(const uint16_t *p, int last, vmask kl) {
    if (last) return _mm256_maskz_loadu_epi16(kl, p);
    return _mm256_loadu_si256((const __m256i *)p);
}
INL vf vf_load_bf16_v(const uint16_t *p, int last, vmask kl) {
    return _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_cvtepu16_epi32(vh_load_v(p, last, kl)), 16));
}
INL vf vf_load_f16_v(const uint16_t *p, int last, vmask kl) {
    return _mm512_cvtph_ps(vh_load_v(p, last, kl));
}
/* And back: VL floats rounded once to 2-byte elements as ../../cvt.h does (bf16: round to
 * nearest even on the bits, NaN quieted, subnormals rounded as numbers; half: vcvtps2ph, round
 * to nearest even), stored at p; the lanes outside a cut vector are never written. */
typedef __m256i vh; /* VL 2-byte elements */
INL vh vf_to_bf16(vf x) {
    const __m512i u = _mm512_castps_si512(x), one = _mm512_set1_epi32(1);
    const __m512i hi = _mm512_srli_epi32(u, 16);
    const __m512i r = _mm512_srli_epi32(
        _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), _mm512_and_si512(hi, one))),
        16);
    const __mmask16 nan = _mm512_cmpgt_epi32_mask(
        _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
    return _mm512_cvtepi32_epi16(
        _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(hi, _mm512_set1_epi32(0x40))));
}
INL vh vf_to_f16(vf x) { return _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
INL void vh_store_v(uint16_t *p, int last, vmask kl, vh h) {
    if (last) _mm256_mask_storeu_epi16(p, kl, h);
    else _mm256_storeu_si256((__m256i *)p, h);
}

INL vf vf_fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); } /* a b + c, one rounding */
INL vf vf_mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
INL vf vf_add(vf a, vf b) { return _mm512_add_ps(a, b); }
INL vf vf_sub(vf a, vf b) { return _mm512_sub_ps(a, b); }
INL vf vf_max(vf a, vf b) { return _mm512_max_ps(a, b); } /* a or b NaN: b */
INL vf vf_div(vf a, vf b) { return _mm512_div_ps(a, b); }
INL vf vf_abs(vf a) { return _mm512_abs_ps(a); }
INL vmask vf_lt(vf a, vf b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
INL vf vf_exp(vf x) { return mha__vexp512(x); }
/* exp of a difference <= 0 whose result is rounded to bf16 (vexp.h: relative error 3e-6) */
INL vf vf_exp_prob(vf d) { return mha__vexp512_prob(d); }
INL vf vf_select(vmask k, vf a, vf b) { return _mm512_mask_mov_ps(b, k, a); }
INL vf vf_maskz(vmask k, vf a) { return _mm512_maskz_mov_ps(k, a); }
/* acc + x over the lanes of kw (the last vector of a row: kw cuts it), acc elsewhere. */
INL vf vf_add_tail(vf acc, vf x, int last, vmask kw) {
    (void)last;
    return _mm512_mask_add_ps(acc, kw, acc, x);
}
INL float vf_hmax(vf v) { return _mm512_reduce_max_ps(v); }
INL float vf_hsum(vf v) { return _mm512_reduce_add_ps(v); }

/* In-place transpose of 16 rows of 16 floats. */
INL void vf_transpose(vf r[16]) {
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

/* Lane i = the sum of the lanes of v[i], for the 16 vectors at once (a tree: pairs of vectors
 * add their 256-bit halves, then their 128-bit quarters, then an in-lane 4 x 4 transpose-add;
 * 31 shuffles and 15 adds where a transpose and 15 adds take 79 operations). */
INL vf vf_sums(const vf v[16]) {
    __m512 w[8], u[4];
#pragma GCC unroll 8
    for (int p = 0; p < 8; p++) /* w[p]: 128-bit chunks 0, 1 of v[2p], 2, 3 of v[2p + 1] */
        w[p] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * p], v[2 * p + 1], 0x44),
                             _mm512_shuffle_f32x4(v[2 * p], v[2 * p + 1], 0xEE));
#pragma GCC unroll 4
    for (int q = 0; q < 4; q++) /* u[q]: chunk k holds 4 partial sums of v[4q + k] */
        u[q] = _mm512_add_ps(_mm512_shuffle_f32x4(w[2 * q], w[2 * q + 1], 0x88),
                             _mm512_shuffle_f32x4(w[2 * q], w[2 * q + 1], 0xDD));
    __m512 s01 = _mm512_add_ps(_mm512_unpacklo_ps(u[0], u[1]), _mm512_unpackhi_ps(u[0], u[1]));
    __m512 s23 = _mm512_add_ps(_mm512_unpacklo_ps(u[2], u[3]), _mm512_unpackhi_ps(u[2], u[3]));
    __m512 r = _mm512_add_ps(_mm512_shuffle_ps(s01, s23, 0x44), _mm512_shuffle_ps(s01, s23, 0xEE));
    /* lane 4k + m of r holds the sum of v[4m + k] */
    const __m512i idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    return _mm512_permutexvar_ps(idx, r);
}

/* The lanes of k whose byte b[c + i] is nonzero (bytes read only in k). */
INL vmask nonzero_bytes(const uint8_t *b, int64_t c, vmask k) {
    __m128i v = _mm_maskz_loadu_epi8(k, b + c);
    return _mm_test_epi8_mask(v, v);
}

/* The allowed keys among columns c .. c+15 of a row: inside [0, end) (end <= bc), not
 * key-padded (mk->pad), not bool-masked (bm: the row of mk->bmask or NULL). */
INL vmask mask_allowed(const mha__attn_tile_mask *mk, const uint8_t *bm, int64_t c, int64_t end,
                       int64_t bc) {
    (void)bc;
    vmask k = mask_tail(end - c);
    if (mk->pad) k &= (__mmask16)~nonzero_bytes(mk->pad, c, k);
    if (bm) k &= (__mmask16)~nonzero_bytes(bm, c, k);
    return k;
}

/* e with the lanes whose keep byte kr[c + i] is 0 set to 0 (bytes read only in kw). */
INL vf vf_keep(vf e, const uint8_t *kr, int64_t c, int64_t end, vmask kw) {
    (void)end;
    return _mm512_maskz_mov_ps(nonzero_bytes(kr, c, kw), e);
}

/* x[c ..] * ks where the keep byte kr[c + i] is nonzero, else exactly 0 (x there never read). */
INL vf vf_dropout_scale(const float *x, const uint8_t *kr, int64_t c, int64_t end, int last,
                        vmask kw, vf ks) {
    (void)end, (void)last;
    vmask kk = nonzero_bytes(kr, c, kw);
    return _mm512_maskz_mul_ps(kk, _mm512_maskz_loadu_ps(kk, x + c), ks);
}

/* Philox lanes (64 bits, the 32-bit word in the low half, the high half don't-care): lane q
 * of a vector holds group q/2 + 4 (q%2) of its 8 groups, so that the 64-bit unpacks of
 * vi_keep_bytes give keys in order. */
INL vi vi_set1(uint64_t x) { return _mm512_set1_epi64((long long)x); }
INL vi vi_group_lanes(void) { return _mm512_setr_epi64(0, 4, 1, 5, 2, 6, 3, 7); }
INL vi vi_add(vi a, vi b) { return _mm512_add_epi64(a, b); }
INL vi vi_mul32(vi a, vi b) { return _mm512_mul_epu32(a, b); } /* full product of low words */
INL vi vi_hi32(vi a) { return _mm512_srli_epi64(a, 32); }
INL vi vi_xor(vi a, vi b) { return _mm512_xor_si512(a, b); }
INL vi vi_xor3(vi a, vi b, vi c) { return _mm512_ternarylogic_epi64(a, b, c, 0x96); }
INL void vi_store(void *p, vi v) { _mm512_store_si512(p, v); }
INL void vi_storeu(void *p, vi v) { _mm512_storeu_si512(p, v); }
/* The form of the threshold that vi_keep_bytes compares with: thr itself (unsigned compare). */
INL vi vi_keep_thr(uint32_t thr) { return _mm512_set1_epi32((int)thr); }

/* The keep bytes (0 / 1) of the 4 x 32 words of 4 x 8 groups (counter words c0..c3 of each
 * lane after the last round), in key order, as 2 vectors of 64 bytes. */
INL void vi_keep_bytes(const vi c0[4], const vi c1[4], const vi c2[4], const vi c3[4], vi thr,
                       vi out[2]) {
    uint64_t bits[2] = {0, 0};
#pragma GCC unroll 4
    for (int v = 0; v < 4; v++) { /* (w0 | w1 << 32), (w2 | w3 << 32): unpacks give key order */
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

/* bfloat16 pairs (AVX512_BF16; only in files compiled with -mavx512bf16: ../avx512bf16/):
 * vb holds VL pairs of bf16 values (2 VL elements, pair k in 32-bit lane k). */
#ifdef __AVX512BF16__
#include <string.h>
typedef __m512i vb;
/* VL pairs at p (64-byte aligned) */
INL vb vb_load(const uint16_t *p) { return _mm512_load_si512(p); }
/* the pairs of lanes k, zero elsewhere (p any alignment; lanes outside k never read) */
INL vb vb_mload(const uint16_t *p, vmask k) { return _mm512_maskz_loadu_epi32(k, p); }
/* the pair at p (2 elements) in every lane */
INL vb vb_bcast(const uint16_t *p) {
    int32_t u;
    memcpy(&u, p, sizeof u);
    return _mm512_set1_epi32(u);
}
/* acc + a0 b0 + a1 b1 per lane (products exact, added in turn; vdpbf16ps) */
INL vf vf_dot2(vf acc, vb a, vb b) { return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b); }
/* lo and hi (2 VL floats, in order) rounded to bf16 pairs (nearest even; vcvtne2ps2bf16,
 * which flushes float32 subnormals to 0) */
INL vb vb_round2(vf lo, vf hi) { return (__m512i)_mm512_cvtne2ps_pbh(hi, lo); }
INL void vb_store(uint16_t *p, vb v) { _mm512_storeu_si512(p, v); }
/* lane k = the pair (a[k], b[k]) of 16-bit elements, for the lanes of k (others 0; b NULL:
 * 0) */
INL vb vb_pair_rows(const uint16_t *a, const uint16_t *b, vmask k) {
    __m512i lo = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, a));
    if (!b) return lo;
    __m512i hi = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, b));
    return _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16));
}
/* lane k = the pair (a_k, b_k), each rounded to bf16 as vb_round2 does */
INL vb vb_zip2(vf a, vf b) {
    static const uint16_t idx[32] __attribute__((aligned(64))) = {
        0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,  21, 6,  22, 7,  23,
        8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
    return _mm512_permutexvar_epi16(_mm512_load_si512(idx), vb_round2(a, b));
}
INL void vb_mstore(uint16_t *p, vmask k, vb v) { _mm512_mask_storeu_epi32(p, k, v); }
/* the first n (n >= 1; at most 2 VL) 16-bit elements at p, 0 in the others (none past them
 * read): VL pairs, the last one half zero for an odd n */
INL vb vb_load_elems(const uint16_t *p, int64_t n) {
    const __mmask32 k = n >= 2 * VL ? (__mmask32)0xFFFFFFFFu : (__mmask32)((1u << n) - 1);
    return _mm512_maskz_loadu_epi16(k, p);
}
#endif

#endif
