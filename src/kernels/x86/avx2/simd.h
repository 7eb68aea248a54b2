/* simd.h - the AVX2 + FMA mapping of the x86 kernel skeleton (../attn_skel.h): only what is
 * ISA-specific. 8-float vectors (ymm), 16 registers. AVX2 has no mask registers: a mask is a
 * vector of 32-bit lanes (all ones = set), applied by vmaskmov loads and stores (which never
 * touch the lanes outside it), by and/andnot, or by blendv. */
#ifndef MHA_AVX2_SIMD_H
#define MHA_AVX2_SIMD_H

#include "../../kernels.h"
#include "vexp.h"

#include <immintrin.h>

#define SIMD_ISA avx2  /* the suffix of the kernels the skeleton defines */
#define VL 8           /* floats per vector */
#define VALIGN 32      /* bytes */
#define MR 6           /* rows of a register block */
#define NVMAX 2        /* vectors per row of a register block: 12 accumulators, 2 loads, 1 bcast */
#define PANEL_OWN_FN 0 /* the float32 score products: inlined (attn_skel.h) */
#define INL static inline __attribute__((always_inline))

typedef __m256 vf;     /* VL floats */
typedef __m256i vmask; /* VL lanes */
typedef __m256i vi;    /* VL / 2 lanes of 64 bits (Philox) */

/* Lanes i < w set (w clamped to [0, VL]). */
INL vmask mask_tail(int64_t w) {
    int wi = w >= 8 ? 8 : w <= 0 ? 0 : (int)w;
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(wi), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
INL vmask mask_full(void) { return _mm256_set1_epi32(-1); }
INL vmask mask_and(vmask a, vmask b) { /* in the float domain, where the masks are used */
    return _mm256_castps_si256(_mm256_and_ps(_mm256_castsi256_ps(a), _mm256_castsi256_ps(b)));
}
INL vmask mask_andnot(vmask a, vmask b) { /* a and not b */
    return _mm256_castps_si256(_mm256_andnot_ps(_mm256_castsi256_ps(b), _mm256_castsi256_ps(a)));
}

INL vf vf_zero(void) { return _mm256_setzero_ps(); }
INL vf vf_set1(float x) { return _mm256_set1_ps(x); }
INL vf vf_bcast(const float *p) { return _mm256_broadcast_ss(p); }
INL vf vf_load(const float *p) { return _mm256_load_ps(p); } /* aligned */
INL void vf_store(float *p, vf v) { _mm256_store_ps(p, v); }
/* Lanes outside k: 0, never read / never written. A store under a full mask is a plain
 * store: vmaskmovps to memory is microcoded on AMD's Zen cores (measured on Zen 3: about 20
 * cycles per store against under 1 for vmovups), and the kernels' masks are mostly full. */
INL vf vf_mload(const float *p, vmask k) { return _mm256_maskload_ps(p, k); }
INL void vf_mstore(float *p, vmask k, vf v) {
    if (_mm256_testc_si256(k, _mm256_set1_epi32(-1))) _mm256_storeu_ps(p, v);
    else _mm256_maskstore_ps(p, k, v);
}
/* A vector of a row whose last vector (last != 0) is cut by kl: plain loads and stores but
 * for that one. */
INL vf vf_load_v(const float *p, int last, vmask kl) {
    return last ? _mm256_maskload_ps(p, kl) : _mm256_loadu_ps(p);
}
INL void vf_store_v(float *p, int last, vmask kl, vf v) {
    if (last) vf_mstore(p, kl, v);
    else _mm256_storeu_ps(p, v);
}

/* The same for VL 2-byte cache elements (bfloat16 / IEEE half) at p, as floats: exact, the
 * bits of ../../cvt.h's scalar conversions. Lanes outside a cut vector: 0, never read (AVX2
 * has no 16-bit masked load: the cut vector's elements go through a small copy). */
INL __m128i vh_load_v(const uint16_t *p, int last, vmask kl) {
    if (!last) return _mm_loadu_si128((const __m128i *)p);
    uint16_t t[8] = {0};
    const int w = __builtin_popcount((unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(kl)));
    for (int i = 0; i < w; i++) t[i] = p[i];
    return _mm_loadu_si128((const __m128i *)t);
}
/* bfloat16: the 16 bits shifted to the top of a float32. */
INL vf vf_load_bf16_v(const uint16_t *p, int last, vmask kl) {
    return _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_cvtepu16_epi32(vh_load_v(p, last, kl)), 16));
}
/* Half: F16C's vcvtph2ps (exact; NaNs quieted, as mha__f16_to_f32). */
INL vf vf_load_f16_v(const uint16_t *p, int last, vmask kl) {
    return _mm256_cvtph_ps(vh_load_v(p, last, kl));
}
/* And back: VL floats rounded once to 2-byte elements as ../../cvt.h does (bf16: round to
 * nearest even on the bits, NaN quieted, subnormals rounded as numbers; half: F16C's
 * vcvtps2ph, round to nearest even), stored at p; a cut vector's elements go through a small
 * copy (no 16-bit masked store either), the others are never written. */
typedef __m128i vh; /* VL 2-byte elements */
INL vh vf_to_bf16(vf x) {
    const __m256i u = _mm256_castps_si256(x), one = _mm256_set1_epi32(1);
    const __m256i hi = _mm256_srli_epi32(u, 16);
    __m256i r = _mm256_srli_epi32(
        _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), _mm256_and_si256(hi, one))),
        16);
    const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)),
                                           _mm256_set1_epi32(0x7f800000));
    r = _mm256_blendv_epi8(r, _mm256_or_si256(hi, _mm256_set1_epi32(0x40)), nan);
    r = _mm256_packus_epi32(r, r); /* (every value <= 0xffff) lanes 0-3 0-3 | 4-7 4-7 */
    return _mm256_castsi256_si128(_mm256_permute4x64_epi64(r, 0x08));
}
INL vh vf_to_f16(vf x) { return _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT); }
INL void vh_store_v(uint16_t *p, int last, vmask kl, vh h) {
    if (!last) {
        _mm_storeu_si128((__m128i *)p, h);
        return;
    }
    uint16_t t[8];
    _mm_storeu_si128((__m128i *)t, h);
    const int w = __builtin_popcount((unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(kl)));
    for (int i = 0; i < w; i++) p[i] = t[i];
}

INL vf vf_fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); } /* a b + c, one rounding */
INL vf vf_mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
INL vf vf_add(vf a, vf b) { return _mm256_add_ps(a, b); }
INL vf vf_sub(vf a, vf b) { return _mm256_sub_ps(a, b); }
INL vf vf_max(vf a, vf b) { return _mm256_max_ps(a, b); } /* a or b NaN: b */
INL vf vf_div(vf a, vf b) { return _mm256_div_ps(a, b); }
INL vf vf_abs(vf a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
INL vmask vf_lt(vf a, vf b) { return _mm256_castps_si256(_mm256_cmp_ps(a, b, _CMP_LT_OQ)); }
INL vf vf_exp(vf x) { return mha__vexp256(x); }
INL vf vf_select(vmask k, vf a, vf b) { return _mm256_blendv_ps(b, a, _mm256_castsi256_ps(k)); }
INL vf vf_maskz(vmask k, vf a) { return _mm256_and_ps(_mm256_castsi256_ps(k), a); }
/* acc + x over the lanes of kw (the last vector of a row: kw cuts it), acc elsewhere. */
INL vf vf_add_tail(vf acc, vf x, int last, vmask kw) {
    if (last) x = _mm256_and_ps(x, _mm256_castsi256_ps(kw));
    return _mm256_add_ps(acc, x);
}

INL float vf_hmax(vf v) {
    __m128 x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_max_ps(x, _mm_movehl_ps(x, x));
    x = _mm_max_ss(x, _mm_shuffle_ps(x, x, 1));
    return _mm_cvtss_f32(x);
}
INL float vf_hsum(vf v) { /* ((v0 + v4) + (v2 + v6)) + ((v1 + v5) + (v3 + v7)) */
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_shuffle_ps(x, x, 1));
    return _mm_cvtss_f32(x);
}

/* In-place transpose of 8 rows of 8 floats. */
INL void vf_transpose(vf r[8]) {
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

/* Lane i = the sum of the lanes of v[i], for the 8 vectors at once (a tree: pairs of vectors
 * add their 128-bit halves, then an in-lane 4 x 4 transpose-add). */
INL vf vf_sums(const vf v[8]) {
    __m256 w[4];
#pragma GCC unroll 4
    for (int p = 0; p < 4;
         p++) /* w[p]: the low half holds 4 partial sums of v[2p], the high v[2p + 1] */
        w[p] = _mm256_add_ps(_mm256_permute2f128_ps(v[2 * p], v[2 * p + 1], 0x20),
                             _mm256_permute2f128_ps(v[2 * p], v[2 * p + 1], 0x31));
    __m256 s01 = _mm256_add_ps(_mm256_unpacklo_ps(w[0], w[1]), _mm256_unpackhi_ps(w[0], w[1]));
    __m256 s23 = _mm256_add_ps(_mm256_unpacklo_ps(w[2], w[3]), _mm256_unpackhi_ps(w[2], w[3]));
    __m256 r = _mm256_add_ps(_mm256_shuffle_ps(s01, s23, 0x44), _mm256_shuffle_ps(s01, s23, 0xEE));
    /* lane 4k + m of r holds the sum of v[2m + k] */
    return _mm256_permutevar8x32_ps(r, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

/* Lanes of the 8 bytes b[c .. c+7] that are 0 (all ones) or not (0); reads only bytes before
 * end. */
INL vmask zero_bytes(const uint8_t *b, int64_t c, int64_t end) {
    __m128i v;
    if (end - c >= 8) {
        v = _mm_loadl_epi64((const __m128i *)(b + c));
    } else {
        uint8_t t[8] = {0};
        for (int64_t i = 0; i < end - c; i++) t[i] = b[c + i];
        v = _mm_loadl_epi64((const __m128i *)t);
    }
    return _mm256_cmpeq_epi32(_mm256_cvtepu8_epi32(v), _mm256_setzero_si256());
}

/* The allowed keys among columns c .. c+7 of a row: inside [0, end) (end <= bc), not
 * key-padded (mk->pad), not bool-masked (bm: the row of mk->bmask or NULL). */
INL vmask mask_allowed(const mha__attn_tile_mask *mk, const uint8_t *bm, int64_t c, int64_t end,
                       int64_t bc) {
    vmask k = mask_tail(end - c);
    if (end > c && mk->pad) k = _mm256_and_si256(k, zero_bytes(mk->pad, c, bc));
    if (end > c && bm) k = _mm256_and_si256(k, zero_bytes(bm, c, bc));
    return k;
}

/* e with the lanes whose keep byte kr[c + i] is 0 set to 0 (bytes read only before end). */
INL vf vf_keep(vf e, const uint8_t *kr, int64_t c, int64_t end, vmask kw) {
    (void)kw;
    return _mm256_andnot_ps(_mm256_castsi256_ps(zero_bytes(kr, c, end)), e);
}

/* x[c ..] * ks where the keep byte kr[c + i] is nonzero, else exactly 0 (also for a NaN x). */
INL vf vf_dropout_scale(const float *x, const uint8_t *kr, int64_t c, int64_t end, int last,
                        vmask kw, vf ks) {
    __m256 drop = _mm256_castsi256_ps(zero_bytes(kr, c, end));
    return _mm256_andnot_ps(drop, _mm256_mul_ps(vf_load_v(x + c, last, kw), ks));
}

/* Philox lanes (64 bits, the 32-bit word in the low half): lane q of a vector holds group
 * q/2 + 2 (q%2) of its 4 groups, so that the 64-bit unpacks of vi_keep_bytes give keys in
 * order. */
INL vi vi_set1(uint64_t x) { return _mm256_set1_epi64x((long long)x); }
INL vi vi_group_lanes(void) { return _mm256_setr_epi64x(0, 2, 1, 3); }
INL vi vi_add(vi a, vi b) { return _mm256_add_epi64(a, b); }
INL vi vi_mul32(vi a, vi b) { return _mm256_mul_epu32(a, b); } /* full product of low words */
INL vi vi_hi32(vi a) { return _mm256_srli_epi64(a, 32); }
INL vi vi_xor(vi a, vi b) { return _mm256_xor_si256(a, b); }
INL vi vi_xor3(vi a, vi b, vi c) { return _mm256_xor_si256(_mm256_xor_si256(a, b), c); }
INL void vi_store(void *p, vi v) { _mm256_store_si256((__m256i *)p, v); }
INL void vi_storeu(void *p, vi v) { _mm256_storeu_si256((__m256i *)p, v); }
/* The form of the threshold that vi_keep_bytes compares with (thr >= 1): unsigned w >= thr is
 * the signed w ^ 2^31 > (thr - 1) ^ 2^31. */
INL vi vi_keep_thr(uint32_t thr) { return _mm256_set1_epi32((int)((thr - 1) ^ 0x80000000u)); }

/* The keep bytes (0 / 1) of the 4 x 16 words of 4 x 4 groups (counter words c0..c3 of each
 * lane after the last round), in key order, as 2 vectors of 32 bytes. */
INL void vi_keep_bytes(const vi c0[4], const vi c1[4], const vi c2[4], const vi c3[4], vi thr,
                       vi out[2]) {
    const __m256i sign = _mm256_set1_epi32((int)0x80000000u);
    __m256i k[8]; /* -1 / 0 per key, keys 8t .. 8t+7 in k[t] */
#pragma GCC unroll 4
    for (int v = 0; v < 4; v++) { /* (w0 | w1 << 32), (w2 | w3 << 32): unpacks give key order */
        __m256i x01 = _mm256_blend_epi32(c0[v], _mm256_slli_epi64(c1[v], 32), 0xAA);
        __m256i x23 = _mm256_blend_epi32(c2[v], _mm256_slli_epi64(c3[v], 32), 0xAA);
        __m256i lo = _mm256_unpacklo_epi64(x01, x23), hi = _mm256_unpackhi_epi64(x01, x23);
        k[2 * v] = _mm256_cmpgt_epi32(_mm256_xor_si256(lo, sign), thr);
        k[2 * v + 1] = _mm256_cmpgt_epi32(_mm256_xor_si256(hi, sign), thr);
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

#endif
