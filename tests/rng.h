/* rng.h - the tests' random numbers: xorshift64* (Vigna), one stream per test file, seeded with
 * TEST_RNG_SEED, which the file defines before including this (so a file's draws never depend
 * on another file's, and each file draws what it drew when it had its own copy of these). */
#ifndef MHA_TEST_RNG_H
#define MHA_TEST_RNG_H

#include <stdint.h>

#ifndef TEST_RNG_SEED
#error "define TEST_RNG_SEED before including rng.h"
#endif

static uint64_t rng_state = TEST_RNG_SEED;

/* Uniform in [0, 1), 53 bits. */
static inline double urand(void) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (double)((rng_state * 2685821657736338717ull) >> 11) * (1.0 / 9007199254740992.0);
}

/* Uniform in [-1, 1), as float. */
static inline float frand(void) { return (float)(2 * urand() - 1); }

/* Uniform in 0 .. n - 1. */
static inline int64_t irand(int64_t n) { return (int64_t)(urand() * (double)n); }

#endif
