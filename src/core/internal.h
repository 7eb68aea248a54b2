/* internal.h - what every part of the library shares: the context, errors, allocation,
 * size arithmetic. Never installed. */
#ifndef MHA_INTERNAL_H
#define MHA_INTERNAL_H

#include "mha.h"
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

struct mha_kernels;

#define MHA__MSG_CAP 512

struct mha_ctx {
    char msg[MHA__MSG_CAP];
    int threads;                    /* >= 1 */
    mha_isa isa;                    /* resolved: never MHA_ISA_AUTO */
    const struct mha_kernels *kern; /* the table for isa */
};

/* Clears the context's message at the start of a public call. */
void mha__clear(mha_ctx *ctx);
/* Records "fmt ..." as the message (ctx or thread-local when ctx == NULL) and returns st. */
mha_status mha__err(mha_ctx *ctx, mha_status st, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
/* 1 if the CPU (CPUID bits) and the OS (XGETBV state) can run isa, whatever was built
 * (src/core/cpu.c: a leaf; the kernel tables ask it, it never asks them). */
int mha__cpu_supports(mha_isa isa);
/* 1 if the AVX-512 path can run and the CPU has AVX512_BF16 (vdpbf16ps; CPUID leaf 7
 * subleaf 1, EAX bit 5): the AVX-512 table then adds its bf16 gemm micro-kernel. */
int mha__cpu_avx512_bf16(void);

/* The kernel table and thread count to use for ctx (NULL ctx: defaults). */
const struct mha_kernels *mha__ctx_kernels(const mha_ctx *ctx);
int mha__ctx_threads(const mha_ctx *ctx);

/* Allocation, with fault injection for tests: mha__fault_after(n) makes the (n+1)-th
 * allocation from now fail (n < 0 disables). Allocations are 64-byte aligned. */
void *mha__malloc(size_t size);
void *mha__calloc(size_t n, size_t size);
void *mha__calloc_stream(size_t size); /* zeroed; huge pages advised (alloc.c) */
void mha__free(void *p);
void mha__fault_after(long n);
/* Number of allocations made so far (for fault-injection loops in tests). */
long mha__alloc_count(void);

/* Overflow-checked size arithmetic: returns 0 on overflow, 1 otherwise. */
int mha__mul_size(size_t a, size_t b, size_t *out);
int mha__add_size(size_t a, size_t b, size_t *out);

/* Tensor validation, messages in the house style:
 * "fn: name.shape[i]: got X, expected Y (why)". want[i] < 0 means any size. */
mha_status mha__check_tensor(mha_ctx *ctx, const char *fn, const char *name, const mha_tensor *t,
                             int ndim, const int64_t *want, const char *why);
/* The same for a view of the given dtype (mha__check_tensor: float32); another dtype is
 * MHA_ERR_UNSUPPORTED "fn: name.dtype: got X, expected Y". */
mha_status mha__check_tensor_as(mha_ctx *ctx, const char *fn, const char *name, const mha_tensor *t,
                                mha_dtype dtype, int ndim, const int64_t *want, const char *why);
/* Bytes per element of a view: 4 (F32) or 2 (BF16, F16). */
size_t mha__tensor_elsize(const mha_tensor *t);

/* Conversions of whole views (convert.c, on nt threads, by the table k's cvt kernels): src
 * (any dtype, strided) into the contiguous float32 dst of its shape, exactly; and the
 * contiguous float32 src into dst (any dtype, strided), each element rounded once (nearest
 * even; src/kernels/cvt.h). */
void mha__tensor_to_f32(const struct mha_kernels *k, const mha_tensor *src, float *dst, int nt);
void mha__tensor_from_f32(const struct mha_kernels *k, const float *src, const mha_tensor *dst,
                          int nt);

/* dst[n] of dtype ddt = the n contiguous elements at src of dtype sdt (float32, bf16 or f16):
 * exact, or rounded once (convert.c; bf16 <-> f16 through float32, exactly, then rounded once;
 * the same dtype: copied). */
void mha__convert_elems(const struct mha_kernels *k, mha_dtype sdt, const void *src, mha_dtype ddt,
                        void *dst, int64_t n);

/* A call on bf16 / f16 views run in float32 (convert.c): mha__lowp_begin makes one
 * allocation holding a contiguous float32 copy of each input (converted now) and a float32
 * buffer for each output or scratch; the call runs on mha__lowp_view(lp, i); mha__lowp_end(lp,
 * st) rounds the outputs into the caller's views when st is MHA_OK (else leaves them
 * untouched) and frees. An allocation failure: MHA_ERR_NOMEM naming fn and the tensor. */
#define MHA__LOWP_MAX 8
typedef struct {
    const char *name;
    const mha_tensor *t; /* validated, or NULL (an absent optional tensor) */
    int out; /* 0: an input (converted); 1: an output (written back by mha__lowp_end); 2: a
              * float32 buffer of its shape, neither converted nor written back */
} mha__lowp_arg;
typedef struct {
    int n, nt;
    const struct mha_kernels *kern; /* the context's table (its conversions) */
    mha__lowp_arg arg[MHA__LOWP_MAX];
    mha_tensor f32[MHA__LOWP_MAX];
    void *mem;
} mha__lowp;
mha_status mha__lowp_begin(mha_ctx *ctx, const char *fn, mha__lowp *lp, int n,
                           const mha__lowp_arg *args);
mha_tensor *mha__lowp_view(mha__lowp *lp, int i);
void mha__lowp_end(mha__lowp *lp, mha_status st);

/* 1 if two validated views may share an element (exact for views with the same strides
 * into one row-major buffer, such as interleaved q/k/v of a packed array; otherwise 1 as
 * soon as their address ranges intersect), 0 if they cannot. Empty views never overlap. */
int mha__tensors_overlap(const mha_tensor *a, const mha_tensor *b);
/* 1 if two indices of t may address the same element (a stride-0 broadcast dimension, or
 * strides that do not step past each other: a dimension's |stride| at most the reach of the
 * smaller ones), 0 if every element is distinct. Written views must not overlap themselves:
 * the writes of different indices would land on one element. */
int mha__tensor_self_overlaps(const mha_tensor *t);

/* Counter-based random numbers: mha__philox4x32 (Philox-4x32-10). */
#include "kernels/philox.h"

#endif
