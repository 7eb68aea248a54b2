/* philox.h - Philox-4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
 * SC'11): four 32-bit words from a 128-bit counter and a 64-bit key. Stateless, so any thread
 * (or SIMD lane: src/kernels/x86/<isa>/attn.c vectorizes the same rounds) can regenerate any
 * element. A leaf header: the module's initialization, the dropout mask of the attention core
 * and the kernels all draw from this one definition. */
#ifndef MHA_PHILOX_H
#define MHA_PHILOX_H

#include <stdint.h>

static inline void mha__philox4x32(uint64_t key, uint32_t c0, uint32_t c1, uint32_t c2,
                                   uint32_t c3, uint32_t out[4]) {
    uint32_t k0 = (uint32_t)key, k1 = (uint32_t)(key >> 32);
    for (int r = 0; r < 10; r++) {
        uint64_t p0 = (uint64_t)0xD2511F53u * c0;
        uint64_t p1 = (uint64_t)0xCD9E8D57u * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
        uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        c0 = n0;
        c1 = (uint32_t)p1;
        c2 = n2;
        c3 = (uint32_t)p0;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

#endif
