/* cpu.c - runtime CPU feature detection: CPUID bits AND the OS-enabled register state
 * (XGETBV), done once. A leaf: it knows nothing of the kernel tables (kernels.c asks it which
 * tables this machine can run). */
#include "internal.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define MHA_X86 1
#endif

static pthread_once_t once = PTHREAD_ONCE_INIT;
static int has_avx2, has_avx512, has_avx512bf16;
static char features[256];

#ifdef MHA_X86
static uint64_t xgetbv0(void) {
    uint32_t lo, hi;
    __asm__ volatile(".byte 0x0f, 0x01, 0xd0" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}
#endif

static void append(const char *s) {
    size_t n = strlen(features);
    snprintf(features + n, sizeof features - n, "%s%s", n ? " " : "", s);
}

static void detect(void) {
#ifdef MHA_X86
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return;
    int fma = (c >> 12) & 1, osxsave = (c >> 27) & 1, avx = (c >> 28) & 1;
    uint64_t xcr0 = osxsave ? xgetbv0() : 0;
    int os_ymm = (xcr0 & 0x6) == 0x6;   /* SSE and AVX state */
    int os_zmm = (xcr0 & 0xe6) == 0xe6; /* + opmask, ZMM_Hi256, Hi16_ZMM */
    unsigned b7 = 0, c7 = 0, d7 = 0, a7 = 0;
    __get_cpuid_count(7, 0, &a7, &b7, &c7, &d7);
    int avx2 = (b7 >> 5) & 1, f = (b7 >> 16) & 1, dq = (b7 >> 17) & 1, bw = (b7 >> 30) & 1,
        vl = (b7 >> 31) & 1;
    if (avx) append("avx");
    if (avx2) append("avx2");
    if (fma) append("fma");
    if (f) append("avx512f");
    if (dq) append("avx512dq");
    if (bw) append("avx512bw");
    if (vl) append("avx512vl");
    unsigned a71 = 0, b71 = 0, c71 = 0, d71 = 0; /* leaf 7, subleaf 1: EAX bit 5 AVX512_BF16 */
    if (a7 >= 1) __get_cpuid_count(7, 1, &a71, &b71, &c71, &d71);
    const int bf16 = (a71 >> 5) & 1;
    if (bf16) append("avx512bf16");
    append(os_zmm ? "os:zmm" : os_ymm ? "os:ymm" : "os:xmm");
    has_avx2 = avx && avx2 && fma && os_ymm;
    has_avx512 = has_avx2 && f && dq && bw && vl && os_zmm;
    has_avx512bf16 = has_avx512 && bf16;
#endif
    if (!features[0]) append("(no x86 simd)");
}

int mha__cpu_supports(mha_isa isa) {
    pthread_once(&once, detect);
    switch (isa) {
    case MHA_ISA_AUTO:
    case MHA_ISA_GENERIC: return 1;
    case MHA_ISA_AVX2: return has_avx2;
    case MHA_ISA_AVX512: return has_avx512;
    }
    return 0;
}

int mha__cpu_avx512bf16(void) {
    pthread_once(&once, detect);
    return has_avx512bf16;
}

const char *mha_cpu_features(void) {
    pthread_once(&once, detect);
    return features;
}
