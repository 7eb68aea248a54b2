/* philox.h - Philox-4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
 * SC'11): four 32-bit words from a 128-bit counter and a 64-bit key. Stateless, so any thread
 * (or SIMD lane: src/kernels/x86/attn_skel.h vectorizes the same rounds) can regenerate any
 * element. A leaf header: the module's initialization, the dropout mask of the attention core
 * and the kernels all draw from this one definition. */
#ifndef MHA_PHILOX_H
#define MHA_PHILOX_H

#include <stdint.h>

/* A round maps the counter (c0, c1, c2, c3) with the round's key words (k0, k1) to
 *   (hi(M1 c2) ^ c1 ^ k0,  lo(M1 c2),  hi(M0 c0) ^ c3 ^ k1,  lo(M0 c0))
 * (64-bit products of 32-bit words); the key words grow by (W0, W1) from round to round. */
#define MHA__PHILOX_M0 0xD2511F53u
#define MHA__PHILOX_M1 0xCD9E8D57u
#define MHA__PHILOX_W0 0x9E3779B9u /* the golden ratio */
#define MHA__PHILOX_W1 0xBB67AE85u /* sqrt(3) - 1 */

static inline void mha__philox4x32(uint64_t key, uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                   uint32_t out[4]) {
    uint32_t k0 = (uint32_t)key, k1 = (uint32_t)(key >> 32);
    for (int r = 0; r < 10; r++) {
        uint64_t p0 = (uint64_t)MHA__PHILOX_M0 * c0;
        uint64_t p1 = (uint64_t)MHA__PHILOX_M1 * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
        uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        c0 = n0;
        c1 = (uint32_t)p1;
        c2 = n2;
        c3 = (uint32_t)p0;
        k0 += MHA__PHILOX_W0;
        k1 += MHA__PHILOX_W1;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

/* The key words of the 10 rounds: round r uses k[2r] and k[2r + 1]. */
static inline void mha__philox_round_keys(uint64_t key, uint32_t k[20]) {
    uint32_t k0 = (uint32_t)key, k1 = (uint32_t)(key >> 32);
    for (int r = 0; r < 10; r++, k0 += MHA__PHILOX_W0, k1 += MHA__PHILOX_W1)
        k[2 * r] = k0, k[2 * r + 1] = k1;
}

/* For counters (g, c1, c2, c3) where only g varies (one SIMD lane per g), the parts of rounds
 * 1 and 2 that do not depend on g. With p = M0 g and q = M1 (hi(p) ^ rs[0]), the counter
 * after round 2 is (hi(q) ^ rs[1], lo(q), lo(p) ^ rs[2], rs[3]); rounds 3 to 10 as usual.
 * (Round 1 gives (n0, lo(M1 c2), hi(p) ^ c3 ^ k1, lo(p)) with n0 = hi(M1 c2) ^ c1 ^ k0 fixed;
 * round 2 multiplies n0 and hi(p) ^ rs[0], with the key words k0 + W0, k1 + W1.) */
static inline void mha__philox4x32_fixed(uint64_t key, uint32_t c1, uint32_t c2, uint32_t c3,
                                         uint32_t rs[4]) {
    uint32_t k0 = (uint32_t)key, k1 = (uint32_t)(key >> 32);
    uint64_t p1 = (uint64_t)MHA__PHILOX_M1 * c2;
    uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
    uint64_t p0 = (uint64_t)MHA__PHILOX_M0 * n0;
    rs[0] = c3 ^ k1;
    rs[1] = (uint32_t)p1 ^ (k0 + MHA__PHILOX_W0);
    rs[2] = (uint32_t)(p0 >> 32) ^ (k1 + MHA__PHILOX_W1);
    rs[3] = (uint32_t)p0;
}

#endif
