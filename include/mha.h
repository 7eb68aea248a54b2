/* mha.h - multi-head attention in C, with the numbers of torch.nn.MultiheadAttention.
 *
 * OVERVIEW
 *   mha computes the multi-head attention layer of "Attention Is All You Need" exactly as
 *   PyTorch's nn.MultiheadAttention does (same parameter names and layouts, same outputs,
 *   attention weights and gradients), plus the attention core on its own, equivalent to
 *   F.scaled_dot_product_attention on already projected q, k, v.
 *
 *   Three layers of API, each usable alone:
 *     1. the module   mha_module_*   projections + attention + output projection, forward and
 *                                    backward, parameters in PyTorch's layout, safetensors I/O;
 *     2. the core     mha_attn_*     softmax(q k^T * scale + mask) v on [B, H, L, D] views;
 *     3. file I/O     mha_npy_*, mha_st_*   .npy and safetensors readers and writers.
 *
 * USAGE
 *     mha_ctx *ctx; mha_module *m;
 *     mha_ctx_create(&ctx);
 *     mha_config cfg = mha_config_default(512, 8);          // E = 512, H = 8
 *     if (mha_module_create(ctx, &cfg, &m) != MHA_OK) { puts(mha_ctx_errmsg(ctx)); ... }
 *     mha_module_load(ctx, m, "layer.safetensors", NULL);   // a PyTorch state_dict()
 *     int64_t xs[3] = {B, L, 512};
 *     mha_tensor x = mha_tensor_make(xbuf, 3, xs), y = mha_tensor_make(ybuf, 3, xs);
 *     mha_mask mask = mha_mask_default();
 *     mask.causal = MHA_CAUSAL_TOP_LEFT;
 *     mha_forward_opts fo = mha_forward_opts_default();
 *     mha_module_forward(ctx, m, &fo, &x, NULL, NULL, &mask, &y, NULL);   // self-attention
 *     mha_module_free(m);
 *     mha_ctx_free(ctx);
 *
 * CONVENTIONS
 *   - Tensors are views (mha_tensor): float32 (mha_tensor_make), or bfloat16 / float16 where
 *     a function says it takes them (mha_tensor_typed); outermost dimension first, strides in
 *     elements, strides >= 0 and only the innermost one must be 1. The caller owns every
 *     buffer it passes.
 *   - Every fallible call returns mha_status: MHA_OK (0) or a negative error code. The detailed
 *     message ("function: what: got X, expected Y") is kept in the context until its next
 *     call: mha_ctx_errmsg(). A NULL context is allowed everywhere: default settings are used
 *     and the message goes to a thread-local buffer read by mha_last_errmsg().
 *   - The library never prints, exits or aborts on bad input.
 *   - Every *_create has a *_free; *_free(NULL) is a no-op.
 *   - Outputs must not share memory with inputs or with other outputs (nothing is computed
 *     in place): the module's, the core's and the matrix products' calls check every pair
 *     (a module's outputs also against its parameters, a backward's against their gradients
 *     too, an incremental forward's against its cache) and
 *     return MHA_ERR_INVALID_ARG naming both ("mha_attn_forward: out overlaps v (...)",
 *     "mha_sgemm: C overlaps A (...)"). Views that interleave in one buffer without sharing
 *     an element (q, k, v of a packed [B, T, 3, H, D] array, or an input and an output side
 *     by side) are not an overlap. An output may not overlap itself either: a view whose
 *     elements share memory (a stride-0 dimension, as torch's expand() makes, or strides that
 *     do not step past each other) is MHA_ERR_INVALID_ARG naming it, as the writes of two
 *     indices would land on one element.
 *
 * THREAD SAFETY
 *   A context, a module or a safetensors collection is used by one thread at a time. Distinct
 *   objects may be used concurrently. Inside a call, work is split over the context's threads
 *   (OpenMP); results are bitwise identical for any thread count.
 *
 * MEMORY (workspace; no call ever allocates an L x S matrix unless the caller asks for weights)
 *   mha_attn_forward    per thread a score tile, the scaled query tile, an output accumulator
 *                       and a few rows: BR * (BC + D + Dv + 8) floats (BR x BC is the fused
 *                       forward's tile, 96 x 256 on SIMD paths: ~147 KiB at D = Dv = 64), and
 *                       a cache of packed key tiles: one head's keys (S * D floats, S rounded
 *                       up to BC), capped at 16 MiB (src/attn/attn_forward.c).
 *   mha_attn_backward   per thread three BR x BC tiles (a fourth with a softcap), keep bytes
 *                       and the scaled query tile (BR x BC = 64 x 128), plus rowsum(dO * O)
 *                       [B, H, L] and the fixed-order dq partial sums: at most a small
 *                       multiple of dq's size (see src/attn/attn_backward.c); linear in L and S.
 *   mha_module_forward  a copy of the inputs, the projections q, k, v, the attention output
 *                       and lse: 5 * B * L * E floats for self-attention (B * (3 * L * E +
 *                       2 * S * E + S * kdim + S * vdim) for cross-attention); averaged
 *                       weights need no [B, H, L, S] buffer (the core averages the heads'
 *                       tiles as it computes them), only the caller's [B, L, S]. With
 *                       save_for_backward (the default) the inputs and masks are copied;
 *                       without it contiguous inputs are read in place, uncopied.
 *   mha_module_backward about as much again as the forward's activations, plus one copy of the
 *                       parameters and the core backward's workspace.
 *   Both keep their buffers (not the core's workspace; staging rows for an out whose strides
 *   need them only while calls do) in the module and reuse them on the next call of the same
 *   sizes; mha_module_free releases them (a forward that
 *   fails with MHA_ERR_NOMEM releases them all, a backward its own).
 *   Example: the causal forward at B=1, L=S=32768, E=512, H=8 peaks under 0.5 GiB resident,
 *   inputs and outputs included (BENCHMARKS.md).
 *
 * MASKS: WHAT "TRUE" MEANS (read this before porting code)
 *
 *   | mask                   | mha (everywhere)       | nn.MHA              | F.SDPA              |
 *   |------------------------|------------------------|---------------------|---------------------|
 *   | bool attn_mask: true   | NOT allowed (masked)   | NOT allowed         | allowed (take part) |
 *   | bool key_padding: true | ignore that key        | ignore that key     | (no such argument)  |
 *   | float attn_mask        | added to scaled scores | added               | added               |
 *   | causal                 | top-left: key j <= i   | is_causal: top-left | is_causal: top-left |
 *   | causal bottom-right    | key j <= i + (S - L)   | -                   | -                   |
 *   | key_lengths[b]         | keys j >= len ignored  | -                   | -                   |
 *   | window (left, right)   | FlashAttention's       | -                   | -                   |
 *   |                        | window_size (bottom-   |                     |                     |
 *   |                        | right aligned)         |                     |                     |
 *   | alibi_slopes           | -slope |i + S - L - j| | -                   | -                   |
 *   |                        | added (FlashAttention) |                     |                     |
 *   | row fully masked       | output 0, weights 0    | see below           | output 0 (2.13)     |
 *   (nn.MHA: nn.MultiheadAttention; F.SDPA: F.scaled_dot_product_attention; bottom-right
 *   causality is FlashAttention's alignment when L != S.)
 *
 *   All masks given combine: a key takes part only if no mask excludes it; float masks add.
 *
 *   The reference is PyTorch 2.13 (where it differs from 1.13, mha follows 2.13; tested in
 *   tests/test_cli.py and by the golden generator):
 *   - A fully masked row: nn.MultiheadAttention with need_weights=False (training mode) runs
 *     F.scaled_dot_product_attention, which gives 0 there: the layer output is out_proj.bias
 *     and no gradient flows through the row, exactly as mha. With need_weights=True, and in
 *     its eval-mode fast path (_native_multi_head_attention), the row is NaN. 1.13: NaN always.
 *   - is_causal=True is only a hint in nn.MultiheadAttention: it requires attn_mask to be the
 *     causal mask (it raises without one). mha's MHA_CAUSAL_TOP_LEFT needs no mask.
 *   - Mask dtypes: bool or float only. 2.13 refuses uint8 masks (1.13 accepted them, deprecated),
 *     and so does mha; a bool key_padding_mask with a float attn_mask is deprecated in 2.13 (a
 *     warning) but combined as here.
 *   - The eval-mode fast path gives the same numbers as the training-mode path (within float
 *     rounding), and so mha's.
 *   - Where the scale applies: mha scales q before the product, (q * scale) k^T, as
 *     nn.MultiheadAttention's need_weights=True path and SDPA's math path do, so scores stay
 *     finite whenever |q.k| * scale does. SDPA's CPU flash path (need_weights=False) multiplies
 *     after the product and gives NaN once |q.k| alone exceeds FLT_MAX (inputs near 1e19).
 *
 *   NaN in q, k, v or a float mask propagates to the rows it reaches, as in PyTorch; the one
 *   exception is a row whose every allowed score is NaN, which is treated as fully masked (0).
 */
#ifndef MHA_H
#define MHA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MHA_VERSION_MAJOR 0
#define MHA_VERSION_MINOR 1
#define MHA_VERSION_PATCH 0
#define MHA_VERSION_STRING "0.1.0"

/* MHA_API marks the public API: the library is built with hidden visibility, so the functions
 * declared with it are the only symbols libmha.so exports (tests/symbols_test.sh checks). */
#ifndef MHA_API
#if defined(__GNUC__) && __GNUC__ >= 4
#define MHA_API __attribute__((visibility("default")))
#else
#define MHA_API
#endif
#endif

/* ---------------------------------------------------------------------------------------------
 * Status codes
 * ------------------------------------------------------------------------------------------- */
typedef enum {
    MHA_OK = 0,
    MHA_ERR_INVALID_ARG = -1, /* a NULL pointer, a bad value, an option out of range */
    MHA_ERR_SHAPE = -2,       /* tensor shapes or strides that do not fit together */
    MHA_ERR_NOMEM = -3,       /* allocation failed, or a size overflowed */
    MHA_ERR_IO = -4,          /* a file could not be opened, read, written or renamed */
    MHA_ERR_FORMAT = -5,      /* a malformed .npy or safetensors file */
    MHA_ERR_NOT_FOUND = -6,   /* a named tensor or parameter is missing */
    MHA_ERR_UNSUPPORTED = -7, /* unsupported dtype, ISA not available on this CPU, no libpng */
    MHA_ERR_STATE = -8        /* call out of order, e.g. backward without a saved forward */
} mha_status;

/* A static, human-readable name for a status ("invalid argument", ...). Never NULL. */
MHA_API const char *mha_status_str(mha_status s);

/* ---------------------------------------------------------------------------------------------
 * Context: error message, thread count, kernel choice
 * ------------------------------------------------------------------------------------------- */
typedef struct mha_ctx mha_ctx;

/* Instruction-set paths for the kernels. */
typedef enum {
    MHA_ISA_AUTO = 0,    /* the best the CPU and OS support (or $MHA_ISA when set) */
    MHA_ISA_GENERIC = 1, /* portable C */
    MHA_ISA_AVX2 = 2,    /* AVX2 + FMA */
    MHA_ISA_AVX512 = 3   /* AVX-512 F/BW/VL/DQ */
} mha_isa;

/* Creates a context. *out is set even when the status is an error other than MHA_ERR_NOMEM
 * (e.g. $MHA_ISA names a path this CPU cannot run), so that mha_ctx_errmsg() explains it.
 * Default: all available cores (omp_get_max_threads(), at most MHA_MAX_THREADS), ISA from
 * $MHA_ISA or auto. */
MHA_API mha_status mha_ctx_create(mha_ctx **out);
MHA_API void mha_ctx_free(mha_ctx *ctx);

/* The message of the last failed call on this context ("" if it succeeded). Valid until the
 * next call that uses ctx. ctx == NULL gives mha_last_errmsg(). */
MHA_API const char *mha_ctx_errmsg(const mha_ctx *ctx);
/* The message of the last failed call made with a NULL context on this thread. */
MHA_API const char *mha_last_errmsg(void);

/* The most threads a context uses: more would only oversubscribe any current machine, and
 * OpenMP runtimes crash or exit when asked for tens of thousands. */
#define MHA_MAX_THREADS 1024

/* Number of threads for calls on this context: 1 <= n <= MHA_MAX_THREADS, or 0 for the
 * default, all available cores (omp_get_max_threads(), which follows $OMP_NUM_THREADS), capped
 * at MHA_MAX_THREADS. A larger n is MHA_ERR_INVALID_ARG, naming the limit (threads unchanged). */
MHA_API mha_status mha_ctx_set_threads(mha_ctx *ctx, int n);
MHA_API int mha_ctx_threads(const mha_ctx *ctx);

/* Forces a kernel path. MHA_ERR_UNSUPPORTED if the CPU or OS cannot run it (never a silent
 * fallback). MHA_ISA_AUTO picks the best available. */
MHA_API mha_status mha_ctx_set_isa(mha_ctx *ctx, mha_isa isa);
MHA_API mha_isa mha_ctx_isa(const mha_ctx *ctx);
MHA_API const char *mha_isa_name(mha_isa isa); /* "generic", "avx2", "avx512", "auto" */
/* 1 if this machine (CPU bits and OS-enabled register state) can run the path. */
MHA_API int mha_isa_supported(mha_isa isa);
/* A one-line description of the CPU features detected, e.g. "avx2 fma avx512f ...". */
MHA_API const char *mha_cpu_features(void);

/* Writes a multi-line, human-readable description of the kernels ctx uses (the path and why,
 * the gemm micro-kernel and its blocking, those of bf16 / f16 operands (mha_gemm), and the
 * attention kernels that run with their tile sizes: the fused forward, dropout, the weights
 * recompute, the backward) into buf (always NUL-terminated, truncated to n bytes). For
 * diagnostics such as `mha info`. MHA_ERR_INVALID_ARG for a NULL buf or n = 0 (its message in
 * ctx, as every call's). */
MHA_API mha_status mha_ctx_describe(mha_ctx *ctx, char *buf, size_t n);

/* Single-precision matrix product on the context's packed SIMD micro-kernels and threads:
 *   C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C      (row-major)
 * op(A) = A [M,K] (lda >= K), or A^T when ta != 0 (A is [K,M], lda >= M); likewise B, tb.
 * beta == 0: C is not read. Bitwise identical results for any thread count. The projections
 * of the module run on it. C (written while A and B are read) may not share an element with A
 * or B, as far as K > 0 has them read: the elements each touches, rows of its ld, count (C in
 * the columns A skips, with ldc == lda, is apart; A and B may overlap each other). Returns
 * MHA_ERR_INVALID_ARG naming the argument ("mha_sgemm: C overlaps A (...)") / MHA_ERR_NOMEM;
 * C unchanged on error.
 * (mha_gemm, below the dtypes: the same with bfloat16 / half A and B.) */
MHA_API mha_status mha_sgemm(mha_ctx *ctx, int ta, int tb, int64_t M, int64_t N, int64_t K,
                             float alpha, const float *A, int64_t lda, const float *B, int64_t ldb,
                             float beta, float *C, int64_t ldc);

/* ---------------------------------------------------------------------------------------------
 * Tensor views
 * ------------------------------------------------------------------------------------------- */
#define MHA_MAX_DIMS 5

/* Element types: of tensor views (the computing calls take F32, and BF16 / F16 where a call
 * says so) and of arrays and files (.npy / safetensors names). */
typedef enum {
    MHA_DTYPE_F32 = 0,      /* "<f4" / "F32" */
    MHA_DTYPE_BOOL = 1,     /* "|b1" / "BOOL", one byte each, 0 or 1 */
    MHA_DTYPE_I32 = 2,      /* "<i4" / "I32" */
    MHA_DTYPE_F64 = 3,      /* "<f8" / "F64" (test fixtures, references) */
    MHA_DTYPE_F16 = 4,      /* "<f2" / "F16", IEEE half */
    MHA_DTYPE_BF16 = 5,     /* - / "BF16", the top 16 bits of a float32 */
    MHA_DTYPE_I64 = 6,      /* "<i8" / "I64" */
    MHA_DTYPE_U8 = 7,       /* "|u1" / "U8" */
    MHA_DTYPE_I8 = 8,       /* "|i1" / "I8" */
    MHA_DTYPE_I16 = 9,      /* "<i2" / "I16" */
    MHA_DTYPE_U16 = 10,     /* "<u2" / "U16" */
    MHA_DTYPE_U32 = 11,     /* "<u4" / "U32" */
    MHA_DTYPE_U64 = 12,     /* "<u8" / "U64" */
    MHA_DTYPE_F8_E4M3 = 13, /* - / "F8_E4M3" (PyTorch's float8_e4m3fn) */
    MHA_DTYPE_F8_E5M2 = 14  /* - / "F8_E5M2" */
} mha_dtype;

/* Mixed-precision matrix product: mha_sgemm (above) with A and B of dtype MHA_DTYPE_F32,
 * MHA_DTYPE_BF16 or MHA_DTYPE_F16 (2-byte elements, lda / ldb counting elements), C, alpha and
 * beta float32:
 *   C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C      (row-major)
 * Every product is accumulated in float32 (bfloat16 and half convert exactly to float32);
 * MHA_DTYPE_F32 gives mha_sgemm's bits exactly. bf16 on a CPU with AVX512_BF16 runs on
 * vdpbf16ps: two products per lane added together, then to the float32 sum (within float32
 * rounding of the other paths, not their bits; subnormal inputs and sums flush to zero).
 * Elsewhere, and for f16, the operands are converted to float32 as they are packed.
 * beta == 0: C is not read. Bitwise identical results for any thread count. C may not
 * overlap A or B, as in mha_sgemm (a 2-byte A or B whose bytes reach C's is an overlap).
 * Returns MHA_ERR_INVALID_ARG (naming the argument), MHA_ERR_UNSUPPORTED (another dtype),
 * MHA_ERR_NOMEM (C unchanged on every error). */
MHA_API mha_status mha_gemm(mha_ctx *ctx, int ta, int tb, int64_t M, int64_t N, int64_t K,
                            float alpha, const void *A, int64_t lda, const void *B, int64_t ldb,
                            mha_dtype dtype, float beta, float *C, int64_t ldc);

/* A view of caller-owned memory. dtype says what data points at: float32 (MHA_DTYPE_F32, 0, so
 * a zero-initialized view and every view made by mha_tensor_make / _strided is float32), or
 * 2-byte bfloat16 / IEEE half elements (mha_tensor_typed). A call that does not take a dtype
 * refuses it with MHA_ERR_UNSUPPORTED naming the tensor. Strides count elements, not bytes. */
typedef struct {
    union {
        float *data; /* the element at index 0 (a float32 view) */
        void *ptr;   /* the same address, for any dtype */
    };
    int ndim;
    int64_t shape[MHA_MAX_DIMS];
    int64_t stride[MHA_MAX_DIMS]; /* in elements; stride[ndim-1] must be 1 */
    mha_dtype dtype;              /* MHA_DTYPE_F32 unless made by mha_tensor_typed */
} mha_tensor;

/* A contiguous (row-major) view of data with the given shape (ndim values; shape may be NULL
 * only when ndim == 0). Never fails: an ndim outside [0, MHA_MAX_DIMS], a NULL shape, or
 * contiguous strides that do not fit in int64 give a view marked invalid (ndim = -1), which
 * every validating call rejects with MHA_ERR_SHAPE. */
MHA_API mha_tensor mha_tensor_make(float *data, int ndim, const int64_t *shape);
/* A strided view; stride == NULL means contiguous. Invalid arguments as for mha_tensor_make. */
MHA_API mha_tensor mha_tensor_strided(float *data, int ndim, const int64_t *shape,
                                      const int64_t *stride);
/* A view of elements of the given dtype (F32, BF16 or F16; another dtype gives an invalid
 * view, ndim = -1); stride == NULL means contiguous. Otherwise as mha_tensor_strided. */
MHA_API mha_tensor mha_tensor_typed(void *data, mha_dtype dtype, int ndim, const int64_t *shape,
                                    const int64_t *stride);
/* dst = src, element by element, between float32, bfloat16 and float16 views of the same shape
 * (any strides; the same dtype copies): to float32 exactly, to bf16 / f16 rounded to nearest
 * even (NaN stays NaN, overflow gives infinity). src and dst may not overlap unless they are
 * the same view, and dst may not overlap itself (a stride-0 dimension). MHA_ERR_SHAPE /
 * MHA_ERR_INVALID_ARG / MHA_ERR_UNSUPPORTED naming the argument; dst unchanged on error. */
MHA_API mha_status mha_tensor_convert(mha_ctx *ctx, const mha_tensor *src, mha_tensor *dst);
/* Number of elements: the product of the shape (0 if any dimension is 0). -1 when there is no
 * such number: t == NULL, ndim outside [0, MHA_MAX_DIMS], a negative dimension, or a product
 * beyond INT64_MAX. Defined for every input (no overflow). */
MHA_API int64_t mha_tensor_numel(const mha_tensor *t);

/* ---------------------------------------------------------------------------------------------
 * Masks (shared by the module and the core; see the table at the top)
 * ------------------------------------------------------------------------------------------- */
typedef enum {
    MHA_CAUSAL_NONE = 0,
    MHA_CAUSAL_TOP_LEFT = 1,    /* key j allowed iff j <= i (PyTorch's is_causal) */
    MHA_CAUSAL_BOTTOM_RIGHT = 2 /* key j allowed iff j <= i + (S - L) (FlashAttention) */
} mha_causal;

typedef struct {
    mha_causal causal;
    /* [B, S] contiguous (unbatched module input: [S]); nonzero = ignore that key. */
    const uint8_t *key_padding;
    /* [B]; key j of batch b is ignored iff j >= key_lengths[b]; 0 <= key_lengths[b] <= S. */
    const int32_t *key_lengths;
    /* Bool attention mask, contiguous [L, S] or [B*H, L, S] (see attn_batched);
     * nonzero = not allowed. */
    const uint8_t *attn_bool;
    /* Float attention mask, same shapes; added to the scaled scores (-INFINITY masks). */
    const float *attn_float;
    /* 0: attn masks are [L, S], shared by every batch and head; 1: [B*H, L, S]
     * (index b*H + h, as PyTorch). For unbatched module input, 1 means [H, L, S]. */
    int attn_batched;
    /* Sliding window (FlashAttention's window_size = (window_left, window_right)), off unless
     * `window` is nonzero: key j of query row i is allowed only if
     *     i + (S - L) - window_left <= j <= i + (S - L) + window_right,
     * -1 meaning unbounded on that side (FlashAttention's; below -1 is refused). Aligned
     * bottom-right as FlashAttention's window (for L == S: around the diagonal j = i), whatever
     * `causal` is;
     * combines with causal and every other mask (a key must pass all). */
    int window;
    int64_t window_left, window_right;
    /* ALiBi (Press et al., 2022): slopes [H] (alibi_batched 0) or [B, H] (1); NULL: none.
     * -slope[h] * |i + (S - L) - j| is added to every score of head h (FlashAttention's
     * convention): after the scale and the softcap, with the float mask. */
    const float *alibi_slopes;
    int alibi_batched;
} mha_mask;

MHA_API mha_mask mha_mask_default(void); /* no mask at all */

/* ---------------------------------------------------------------------------------------------
 * The attention core:  out = dropout(softmax(q k^T * scale + mask)) v, per batch and head
 * ------------------------------------------------------------------------------------------- */
typedef struct {
    float scale;     /* 0: 1/sqrt(D) */
    float dropout_p; /* probability of zeroing a weight, in [0, 1]; 0 disables dropout, 1 drops
                      * every weight (out 0, lse as without dropout; the backward's gradients 0) */
    uint64_t seed;   /* dropout key: the same (seed, offset) gives the same dropout mask */
    uint64_t offset; /* dropout stream offset, e.g. a call counter */
    /* Logit soft-capping (Gemma 2): > 0 maps every scaled score s to softcap * tanh(s /
     * softcap) before ALiBi and the masks (the backward multiplies by its derivative);
     * 0: off. */
    float softcap;
} mha_attn_params;

MHA_API mha_attn_params mha_attn_params_default(void);

/* The score of query row i and key j of head (b, h), every option applied (the definition the
 * kernels compute, tiled):
 *     s = scale * (q_i . k_j)                           (q scaled first: (scale q_i) . k_j)
 *     s = softcap * tanh(s / softcap)                   (p->softcap > 0)
 *     s = s - slope[b, h] * |i + (S - L) - j|           (mask->alibi_slopes)
 *     s = s + attn_float[.., i, j]                      (mask->attn_float)
 *     s = -inf if any mask excludes key j for row i     (causal, window, key_padding,
 *                                                        key_lengths, attn_bool)
 *     P_i = softmax_j(s),  out_i = sum_j dropout(P_ij) v_j   (a row with no finite s: out 0) */

/* Forward of the attention core, equivalent to F.scaled_dot_product_attention (with mha's
 * mask conventions, and 0 instead of NaN on fully masked rows).
 *   q: [B, H, L, D]   k: [B, Hkv, S, D]   v: [B, Hkv, S, Dv]  (strided views, read only)
 *        Hkv = H, or a divisor of H: grouped-query attention (Hkv = 1: multi-query), query
 *        head h using key/value head h / (H / Hkv), without a copy of k and v
 *   Empty sizes, as PyTorch's empty tensors: B, H, L or S may be 0. B, H or L = 0 computes
 *        nothing and writes nothing (out, lse and weights have no element); H = 0 goes with
 *        any Hkv, 0 included (0 is a multiple of every Hkv; H > 0 needs Hkv >= 1). S = 0
 *        makes every row fully masked (out 0, lse -INFINITY). The backward then sets what
 *        no query reads to 0: dk and dv when B, H or L is 0. D >= 1 always; Dv may be 0.
 *   out: [B, H, L, Dv] overwritten (a strided view: [B, L, H, Dv] memory works without copy)
 *   lse: [B, H, L] overwritten, optional (NULL): per-row log-sum-exp of the scaled, masked
 *        scores (-INFINITY for a fully masked row), needed by mha_attn_backward
 *   weights: [B, H, L, S] overwritten, optional (NULL): the attention probabilities after
 *        dropout (as PyTorch returns them)
 * Aliasing: no output (out, lse, weights) may share memory with an input (q, k, v) or with
 * another output (outputs are written while inputs are still read): MHA_ERR_INVALID_ARG
 * naming both, e.g. "mha_attn_forward: out overlaps v (...)". Inputs may share memory, and
 * views that interleave without sharing an element are fine: q, k, v as views of one packed
 * [B, T, 3, H, D] buffer.
 * Dropout uses a counter-based generator keyed by (seed, offset, b, h, i, j): the backward
 * regenerates the same mask. Returns MHA_ERR_SHAPE / MHA_ERR_INVALID_ARG with a message.
 * Dtypes: q, k, v and out all float32, all bfloat16 or all float16 (mha_tensor_typed); lse and
 * weights are float32 views in every case (so are float masks). bf16 / f16: every product,
 * the softmax and lse are computed in float32 from the exact inputs, and out is rounded once
 * (nearest even), so the error is the output's rounding plus float32 accumulation; except that
 * bf16 on a CPU with AVX512_BF16 runs vdpbf16ps kernels (mha info), which also round the
 * probabilities to bf16 as operands of the product with v (as FlashAttention does); the
 * weights of such a call are the float32 softmax of those kernels' scores (products summed in
 * pairs: within float32 rounding of the float32 call's), and out is the same with or without
 * them. Elsewhere (and f16) the float32 kernels run on float32 copies (extra memory: q, k, v
 * and out in float32, linear in L and S). Another dtype or a mismatch:
 * MHA_ERR_UNSUPPORTED naming the tensor. */
MHA_API mha_status mha_attn_forward(mha_ctx *ctx, const mha_attn_params *p, const mha_tensor *q,
                                    const mha_tensor *k, const mha_tensor *v, const mha_mask *mask,
                                    mha_tensor *out, mha_tensor *lse, mha_tensor *weights);

/* Backward of mha_attn_forward (its forward quoted above), with the same p and mask.
 *   out, lse: what the forward produced; dout: [B, H, L, Dv]
 *   Aliasing as in the forward: dq, dk, dv may not share memory with q, k, v, out, lse, dout
 *   or each other (MHA_ERR_INVALID_ARG); dq, dk, dv may be interleaved views of one packed
 *   [B, T, 3, H, D] gradient buffer.
 *   dq: [B, H, L, D], dk: [B, Hkv, S, D], dv: [B, Hkv, S, Dv] (as k, v): overwritten (not
 *   accumulated); with grouped-query attention each group's query heads' contributions to dk,
 *   dv summed in head order (a [B, H, S, D + Dv] workspace).
 *   Dtypes: q, k, v, out, dout, dq, dk and dv of one dtype (float32, bfloat16 or float16), lse
 *   float32; bf16 / f16 computed in float32 from the exact inputs, each gradient rounded once:
 *   float16, and bfloat16 without the bf16 kernels, run the float32 backward with out
 *   recomputed in float32 from q, k, v (one forward more; the given out is validated, not
 *   read: the rounded out's error, amplified where dout . out cancels against dout . v_j,
 *   would cost dq and dk their accuracy); with the bf16 kernels (AVX512_BF16) out is read as
 *   given and P and dS are rounded to bf16 as product operands. */
MHA_API mha_status mha_attn_backward(mha_ctx *ctx, const mha_attn_params *p, const mha_tensor *q,
                                     const mha_tensor *k, const mha_tensor *v, const mha_mask *mask,
                                     const mha_tensor *out, const mha_tensor *lse,
                                     const mha_tensor *dout, mha_tensor *dq, mha_tensor *dk,
                                     mha_tensor *dv);

/* Packed variable-length batches (FlashAttention's varlen layout): `batch` sequences of
 * different lengths stored one after another, no padding stored or computed.
 *   q: [Tq, H, D]   k: [Tk, Hkv, D]   v: [Tk, Hkv, Dv]   (strided views, read only)
 *   cu_seqlens_q, cu_seqlens_k: int32 [batch + 1] prefix sums of the sequences' lengths:
 *        cu[0] = 0, non-decreasing, cu[batch] = Tq (resp. Tk). Sequence s has the query rows
 *        cu_seqlens_q[s] .. cu_seqlens_q[s+1]-1 and the keys cu_seqlens_k[s] .. [s+1]-1.
 *   out: [Tq, H, Dv] overwritten   lse: [H, Tq] overwritten, optional (NULL) in the forward
 *        (FlashAttention's varlen softmax_lse layout)
 * Each sequence is attended exactly as mha_attn_forward attends one batch entry of its own
 * lengths L_s, S_s: causal, the window and ALiBi are aligned per sequence (bottom-right:
 * S_s - L_s), grouped-query heads work as there, ALiBi slopes are [H] (alibi_batched 0) or
 * [batch, H] (1). Masks that need a dense [B, L, S] layout (key_padding, key_lengths,
 * attn_bool, attn_float) are refused (MHA_ERR_INVALID_ARG): the lengths say which keys exist.
 * Dropout draws, for sequence s, the mask mha_attn_forward draws for batch entry s (with the
 * same p), so a packed batch of equal lengths gives the dense batch's numbers. A sequence
 * with L_s = 0 writes nothing; one with S_s = 0 gives out 0 and lse -INFINITY on its rows.
 * Every argument and every cu_seqlens entry is checked before anything is computed: after an
 * argument error (MHA_ERR_INVALID_ARG / MHA_ERR_SHAPE naming it, e.g. "cu_seqlens_q[3]: got 10,
 * expected <= 8 (total tokens q.shape[0])") nothing is written. Aliasing as in
 * mha_attn_forward. Long sequences run one after another, each on every thread; short ones
 * (below 2^24 multiply-adds) side by side, one thread each (the same results: the core's do not
 * depend on its thread count); the dense core's workspace for one sequence per thread.
 * Dtypes as mha_attn_forward's: q, k, v, out (dout, dq, dk, dv) all float32, bfloat16 or
 * float16, lse float32. */
MHA_API mha_status mha_attn_varlen_forward(mha_ctx *ctx, const mha_attn_params *p,
                                           const mha_tensor *q, const mha_tensor *k,
                                           const mha_tensor *v, const int32_t *cu_seqlens_q,
                                           const int32_t *cu_seqlens_k, int64_t batch,
                                           const mha_mask *mask, mha_tensor *out, mha_tensor *lse);

/* Backward of mha_attn_varlen_forward, with the same p, cu_seqlens and mask.
 *   out, lse: what the forward produced (lse required); dout: [Tq, H, Dv]
 *   dq: [Tq, H, D], dk: [Tk, Hkv, D], dv: [Tk, Hkv, Dv]: overwritten (the keys of a sequence
 *   with L_s = 0 get 0). Aliasing as in mha_attn_backward. */
MHA_API mha_status mha_attn_varlen_backward(mha_ctx *ctx, const mha_attn_params *p,
                                            const mha_tensor *q, const mha_tensor *k,
                                            const mha_tensor *v, const int32_t *cu_seqlens_q,
                                            const int32_t *cu_seqlens_k, int64_t batch,
                                            const mha_mask *mask, const mha_tensor *out,
                                            const mha_tensor *lse, const mha_tensor *dout,
                                            mha_tensor *dq, mha_tensor *dk, mha_tensor *dv);

/* ---------------------------------------------------------------------------------------------
 * Decoding with a key/value cache (FlashAttention's flash_attn_with_kvcache)
 * ------------------------------------------------------------------------------------------- */
/* Appends new keys and values to a cache, then attends new queries to the whole cache:
 *   q:       [B, H, L, D]            the new tokens' queries; its dtype (float32, bfloat16 or
 *            float16: mha_tensor_typed) is the call's: the caches, k_new, v_new and out must
 *            have it too (another is MHA_ERR_UNSUPPORTED naming the tensor, e.g.
 *            "mha_attn_kvcache: v_cache.dtype: got float16, expected bfloat16 (the dtype of
 *            the call's inputs)"); lse is float32 always
 *   k_cache: [B, Hkv, Smax, D], v_cache: [B, Hkv, Smax, Dv]   written (rows below), then read;
 *            strided views: FlashAttention's [B, Smax, Hkv, D] memory works without a copy;
 *            Hkv divides H (grouped-query attention, as mha_attn_forward; B, H or L = 0:
 *            nothing attended, out and lse empty, the new rows appended all the same)
 *   k_new:   [B, Hkv, Lnew, D], v_new: [B, Hkv, Lnew, Dv], or both NULL (Lnew = 0)
 *   cache_seqlens: int32 [B], the tokens already in each sequence's cache (NULL: all 0); not
 *            modified (as FlashAttention: the caller advances it)
 *   out:     [B, H, L, Dv] overwritten; lse: [B, H, L] overwritten, optional (NULL)
 * For each batch b, with len = cache_seqlens[b] + Lnew: k_new[b] and v_new[b] are copied into
 * cache rows cache_seqlens[b] .. len - 1, then q[b] attends to the keys [0, len) with the score
 * definition above (p's scale and softcap), every position aligned bottom-right to len: query
 * row i sits at key position i + len - L, so
 *   mask->causal (either value) allows key j iff j <= i + len - L,
 *   mask->window allows i + len - L - window_left <= j <= i + len - L + window_right,
 *   ALiBi adds -slope * |i + len - L - j|.
 * p->dropout_p must be 0; mask->key_padding, key_lengths, attn_bool and attn_float are refused
 * (MHA_ERR_UNSUPPORTED: cache_seqlens gives each sequence its length). A row with no allowed
 * key gets out 0 and lse -INFINITY.
 * bfloat16 / float16: the new rows are appended as they are; keys and values are read from the
 * cache in their dtype and converted exactly, q converted exactly and scaled in float32, every
 * product, the softmax and the log-sum-exp computed in float32, and out rounded once to the
 * dtype (round to nearest even). A 2-byte cache is half the bytes to read: decoding, bound by
 * memory, is up to twice as fast.
 * Two paths, the same results up to float rounding: a few query rows per key/value head
 * (L * H / Hkv <= 16, or <= 64 when Hkv < H: decoding, speculative decoding's few tokens with
 * grouped heads) run flash-decoding, the cache cut into fixed chunks of 512 keys computed in
 * parallel and merged by log-sum-exp (bitwise the same for any thread count), each key and
 * value read once per key/value head; more (a prompt's prefill) run mha_attn_forward's tiles
 * per sequence.
 * Errors (every argument is checked before anything is written: on error the caches, out and
 * lse are untouched): MHA_ERR_SHAPE / MHA_ERR_INVALID_ARG naming the argument, e.g.
 * "mha_attn_kvcache: cache_seqlens[1]: got 30, expected at most 28 (cache overflow: 30 + 4 new
 * tokens exceed the cache's 32 rows)"; the caches and out, lse must not overlap each other, q,
 * k_new or v_new (MHA_ERR_INVALID_ARG), except that without new rows (Lnew = 0) the caches are
 * only read, as q: they may then share memory with each other, with q or within themselves
 * (k_cache = v_cache, a cache expand()ed over the batch); MHA_ERR_UNSUPPORTED for the masks
 * above. A decoding
 * call allocates before writing (MHA_ERR_NOMEM: nothing written); a prefill may fail with
 * MHA_ERR_NOMEM after the new rows are in the cache. Memory: the chunks' partial results,
 * B * Hkv * ceil(max len / 512) * L * H / Hkv * (Dv + 2) floats, and the scaled queries,
 * B * H * L * D floats, for decoding; mha_attn_forward's workspace for a prefill (per
 * sequence; with a 2-byte dtype it includes float32 copies of the sequence's q, keys, values
 * and out). Thread safety: as mha_attn_forward. */
MHA_API mha_status mha_attn_kvcache(mha_ctx *ctx, const mha_attn_params *p, const mha_tensor *q,
                                    mha_tensor *k_cache, mha_tensor *v_cache,
                                    const mha_tensor *k_new, const mha_tensor *v_new,
                                    const int32_t *cache_seqlens, const mha_mask *mask,
                                    mha_tensor *out, mha_tensor *lse);

/* mha_attn_kvcache on PAGED caches (vLLM's PagedAttention, FlashAttention's block_table): the
 * sequences' keys and values live in a pool of fixed-size pages, each sequence's in the pages
 * its row of block_table names, in order:
 *   k_pages: [P, Hkv, page, D], v_pages: [P, Hkv, page, Dv]   P pages of `page` rows (strided
 *            views as the caches above: FlashAttention's [P, page, Hkv, D] memory works)
 *   block_table: int32 [B, max_blocks], row-major: key j of sequence b is row j % page of page
 *            block_table[b * max_blocks + j / page]; NULL only with max_blocks 0
 * Everything else is mha_attn_kvcache's (arguments, semantics, errors, the two paths), each
 * sequence's cache holding at most max_blocks * page rows. Only the blocks a sequence uses
 * (its rows [0, cache_seqlens[b] + Lnew)) are read from the table, and each must name a page
 * in [0, P) (MHA_ERR_INVALID_ARG, e.g. "mha_attn_kvcache_paged: block_table[1][3]: got 9,
 * expected a page in [0, 8) ..."). Sequences may share the pages they only read (a common
 * prompt); a page that new rows are written to must be used by no other block (of any
 * sequence): MHA_ERR_INVALID_ARG naming both blocks, nothing written. Results: a decoding
 * chunk within one page is computed as on a contiguous cache, so with a page of a multiple of
 * 512 rows the results are bitwise those of mha_attn_kvcache on the same rows laid out
 * contiguously; a chunk spanning pages is computed page by page, the online softmax carried
 * from each page to the next (the same up to float rounding; still bitwise the same for any
 * thread count).
 * A prefill copies each sequence's rows into one contiguous buffer first (max len * Hkv *
 * (D + Dv) elements, allocated before anything is written) and is then bitwise the
 * contiguous prefill. Decoding needs no memory beyond mha_attn_kvcache's; with new rows
 * (Lnew > 0) the table check takes P bytes (which pages the blocks use), freed on return. */
MHA_API mha_status mha_attn_kvcache_paged(mha_ctx *ctx, const mha_attn_params *p,
                                          const mha_tensor *q, mha_tensor *k_pages,
                                          mha_tensor *v_pages, const int32_t *block_table,
                                          int64_t max_blocks, const mha_tensor *k_new,
                                          const mha_tensor *v_new, const int32_t *cache_seqlens,
                                          const mha_mask *mask, mha_tensor *out, mha_tensor *lse);

/* Packed queries of many sequences against their PAGED caches in one call (FlashAttention's
 * flash_attn_varlen_func with block_table; an inference engine's continuous batching, where
 * one step mixes sequences decoding one token with chunks of prompts being prefilled):
 *   q:       [Tq, H, D] the batch's query rows packed one after another (strided view;
 *            float32, bfloat16 or float16, the call's dtype as in mha_attn_kvcache)
 *   k_pages, v_pages, block_table, max_blocks: the pools and the table as in
 *            mha_attn_kvcache_paged (block_table [batch, max_blocks]); only read
 *   cu_seqlens_q: int32 [batch + 1] prefix sums: sequence s has the query rows
 *            cu_seqlens_q[s] .. cu_seqlens_q[s + 1] - 1 (0 rows: nothing computed for it)
 *   seqlens_k: int32 [batch], sequence s's keys: rows [0, seqlens_k[s]) of its pages (its new
 *            tokens' keys already written there, as FlashAttention expects)
 *   out:     [Tq, H, Dv] overwritten; lse: [H, Tq] overwritten, optional (NULL)
 * Sequence s is attended exactly as mha_attn_kvcache_paged attends a sequence of
 * cache_seqlens = seqlens_k[s] with no new rows: query row i at key position
 * i + seqlens_k[s] - L_s (bottom-right; mask->causal, either value, allows keys j <= that
 * position; window and ALiBi as there, slopes [H] or [batch, H] with alibi_batched),
 * p->dropout_p 0, the same two paths (a few rows per key/value head decode, more prefill), and
 * a row with no allowed key gets out 0 and lse -INFINITY.
 * Consecutive sequences with the same number of query rows run as one batch (the decoding
 * ones together); a sequence's results do not depend on the others, nor on the thread count.
 * Errors: every argument, every cu_seqlens_q and seqlens_k entry and every block a sequence
 * uses is checked before anything is computed (MHA_ERR_SHAPE / MHA_ERR_INVALID_ARG naming it,
 * e.g. "mha_attn_varlen_paged: seqlens_k[2]: got 70, expected 0 .. 64 (...)"; out and lse must
 * not overlap q, the pools, cu_seqlens_q, seqlens_k, block_table or each other);
 * MHA_ERR_UNSUPPORTED for the dense masks and dtypes
 * as mha_attn_kvcache. A later batch of sequences may fail with MHA_ERR_NOMEM after earlier
 * ones wrote their rows of out. Memory: mha_attn_kvcache_paged's, for one batch at a time. */
MHA_API mha_status mha_attn_varlen_paged(mha_ctx *ctx, const mha_attn_params *p,
                                         const mha_tensor *q, const mha_tensor *k_pages,
                                         const mha_tensor *v_pages, const int32_t *block_table,
                                         int64_t max_blocks, const int32_t *cu_seqlens_q,
                                         const int32_t *seqlens_k, int64_t batch,
                                         const mha_mask *mask, mha_tensor *out, mha_tensor *lse);

/* Writes T new tokens' keys and values into paged caches by slot (vLLM's reshape_and_cache), for
 * the calls that only read the pools (mha_attn_varlen_paged: write a step's tokens, then attend):
 *   k_pages: [P, Hkv, page, D], v_pages: [P, Hkv, page, Dv]   as mha_attn_kvcache_paged's
 *            (float32, bfloat16 or float16; strided views), written
 *   k: [T, Hkv, D], v: [T, Hkv, Dv]   the tokens' rows, of the pools' dtype (strided views)
 *   slot_mapping: int64 [T]: token t's rows go to slot slot_mapping[t] = page * rows per page +
 *            row, for every key/value head; -1 skips the token (a padding token); NULL only
 *            with T = 0
 * The bytes are copied as they are. Errors (nothing written): shapes, dtypes, a slot outside
 * [-1, P x page) and a slot given to two tokens (MHA_ERR_INVALID_ARG naming both entries, e.g.
 * "mha_paged_store: slot_mapping[3]: got 17, also slot_mapping[1]'s, expected a slot of its
 * own ..."), the pools overlapping k, v, slot_mapping or each other; MHA_ERR_NOMEM (the
 * duplicate check sorts a copy of the slots, 16 bytes each). */
MHA_API mha_status mha_paged_store(mha_ctx *ctx, mha_tensor *k_pages, mha_tensor *v_pages,
                                   const mha_tensor *k, const mha_tensor *v,
                                   const int64_t *slot_mapping);

/* Rotary position embeddings (RoFormer; FlashAttention's apply_rotary_emb with its rotary_cos
 * and rotary_sin tables), in place, for q and k before they are attended or appended to a cache:
 *   x:   [B, H, L, D] float32, bfloat16 or float16 (any strides, the innermost 1), written
 *   cos, sin: float32 [S_ro, R / 2], rotary_dim R <= D (cos[p][k] = cos(p * theta_k), ...)
 *   positions: int32 [B, L], row-major: the position of token i of sequence b (a decoding
 *            step: cache_seqlens[b] + i), each in [0, S_ro); NULL: token i at position i
 *   interleaved: 1 rotates the pairs (2k, 2k + 1) (GPT-J), 0 the pairs (k, k + R / 2) (GPT-NeoX,
 *            Llama): x0' = x0 cos - x1 sin, x1' = x0 sin + x1 cos with the angles of row p
 * The dimensions from R on are left as they are. Computed in float32, rounded once to x's
 * dtype. Errors name the argument (an R / 2 of 0 or past D / 2, a position out of range, cos and
 * sin of other shapes, x overlapping them or itself); x unchanged on error. */
MHA_API mha_status mha_rotary(mha_ctx *ctx, mha_tensor *x, const mha_tensor *cos,
                              const mha_tensor *sin, const int32_t *positions, int interleaved);

/* A key/value cache owned by the library (mha_kv_cache_create, below the dtypes). */
typedef struct mha_kv_cache mha_kv_cache;

/* ---------------------------------------------------------------------------------------------
 * The module: torch.nn.MultiheadAttention(E, H, dropout, bias, kdim=, vdim=, batch_first=True)
 * ------------------------------------------------------------------------------------------- */
typedef struct mha_module mha_module;
typedef struct mha_st mha_st; /* a safetensors collection (see "Arrays and files") */

typedef struct {
    int64_t embed_dim; /* E */
    int64_t num_heads; /* H, E % H == 0 */
    int64_t kdim;      /* key feature size; 0 = E */
    int64_t vdim;      /* value feature size; 0 = E */
    int bias;          /* 1: in_proj_bias and out_proj.bias exist (default) */
    float dropout;     /* dropout on attention weights in training mode, [0, 1] */
    uint64_t seed;     /* seeds the initialization and the dropout stream */
    /* The element type of the parameters, the inputs and outputs and every activation:
     * MHA_DTYPE_F32 (0, default), MHA_DTYPE_BF16 or MHA_DTYPE_F16. A bf16 / f16 layer computes
     * as PyTorch's layer of that dtype: each projection (as the attention core) accumulates in
     * float32 and rounds its result to the dtype once, biases added before that rounding;
     * parameters and their gradients are stored in the dtype (a gradient accumulated in
     * float32 and rounded, as autograd's += on a bf16 tensor). Attention weights and float
     * masks stay float32. */
    mha_dtype dtype;
} mha_config;

MHA_API mha_config mha_config_default(int64_t embed_dim, int64_t num_heads);

/* Creates a module with PyTorch's initialization, reproducible from cfg->seed:
 * xavier-uniform in_proj_weight (or q/k/v_proj_weight), out_proj.weight uniform in
 * +-1/sqrt(E), zero biases. Gradients start at zero. */
MHA_API mha_status mha_module_create(mha_ctx *ctx, const mha_config *cfg, mha_module **out);
/* Finds one attention layer in a collection (a layer's or a whole model's state_dict) and
 * returns it as a NEW collection (*out; free with mha_st_free) in nn.MultiheadAttention's names
 * and layout, float32:
 *   kdim == vdim == E:  "in_proj_weight" [3E, E], else "q_proj_weight" [E, E],
 *                       "k_proj_weight" [E, kdim], "v_proj_weight" [E, vdim];
 *   always:             "out_proj.weight" [E, E];
 *   with biases:        "in_proj_bias" [3E], "out_proj.bias" [E]
 * and the metadata "layout" (below), "prefix" (the one resolved) and "num_heads" when st records
 * it. The layouts, detected from the names under a layer prefix:
 *   "nn.MultiheadAttention"  in_proj_weight (or q_proj_weight, k_proj_weight, v_proj_weight),
 *                            in_proj_bias, out_proj.weight, out_proj.bias
 *   "seed"                   W_q, W_k, W_v, W_o (.weight, .bias): the MultiHeadAttention
 *                            module this project started from
 *   "huggingface"            q_proj, k_proj, v_proj, and out_proj or o_proj (.weight, .bias)
 *   "bert"                   self.query, self.key, self.value, output.dense (.weight, .bias):
 *                            HF BERT's prefix is "bert.encoder.layer.0.attention."; query, key,
 *                            value and output.dense directly under the prefix work too
 *   "gpt2"                   c_attn [E, 3E] and c_proj [E, E] (.weight: Conv1D's [in, out],
 *                            transposed here; .bias [3E], [E]); attn.bias and attn.masked_bias
 *                            (buffers) are ignored
 * Biases: those present are copied; when only some of the q, k, v and output biases exist, the
 * others are zeros (numerically the same layer); with none, the result has none (bias = 0).
 * Parameters in bfloat16, float16 or float64 are converted to float32 (exactly for the first
 * two); another dtype is MHA_ERR_UNSUPPORTED naming the tensor. Shapes are checked, naming the
 * tensor (MHA_ERR_SHAPE; a k or v projection with fewer rows than q, grouped-query attention,
 * is MHA_ERR_UNSUPPORTED). bias_k or bias_v under the prefix (add_bias_kv=True): unsupported.
 * prefix: NULL or "": st must hold exactly one layer, or one at the top level (no prefix: a
 * layer saved with other things beside it, e.g. its gradients); several: MHA_ERR_INVALID_ARG
 * listing them. Otherwise the layer whose prefix is prefix, or prefix + "."; failing that the
 * one layer whose prefix starts with prefix + "." ("encoder.layers.1": layer 1, not 10), or
 * else with prefix (several: MHA_ERR_INVALID_ARG listing them; none: MHA_ERR_INVALID_ARG
 * listing the file's layers). No layer at all: MHA_ERR_NOT_FOUND saying what was looked for,
 * or which tensor an incomplete layer lacks. st is not changed. Allocates the result only. */
MHA_API mha_status mha_st_layer(mha_ctx *ctx, const mha_st *st, const char *prefix, mha_st **out);

/* Creates a module from the attention layer prefix picks in a safetensors file (mha_st_layer:
 * any layout above, any float dtype), and loads its parameters as mha_module_load does: E,
 * kdim, vdim and bias come from the tensors' shapes. num_heads: 0 takes the number the file
 * records in its metadata ({"num_heads": "8"}, as mha_module_save writes it;
 * MHA_ERR_INVALID_ARG when the file has none: other checkpoints rarely record it); a positive
 * number must agree with the file's (MHA_ERR_INVALID_ARG otherwise: a layer run with the wrong
 * number of heads gives wrong results without any other sign) and divide E. */
MHA_API mha_status mha_module_create_from_file(mha_ctx *ctx, const char *path, const char *prefix,
                                               int64_t num_heads, mha_module **out);
/* The same from a loaded collection. */
MHA_API mha_status mha_module_create_from_st(mha_ctx *ctx, const mha_st *st, const char *prefix,
                                             int64_t num_heads, mha_module **out);
/* The configuration of the layer prefix picks (mha_st_layer), without creating a module:
 * embed_dim, kdim, vdim and bias from the tensors, num_heads from the metadata (0 when not
 * recorded), the rest default. */
MHA_API mha_status mha_module_config_from_st(mha_ctx *ctx, const mha_st *st, const char *prefix,
                                             mha_config *cfg);
/* A new module holding m's parameters and their gradients in dtype (MHA_DTYPE_F32, BF16 or
 * F16), as PyTorch's module.to(dtype) converts them: to float32 exactly, to bf16 / f16 each
 * value rounded once to nearest even (bf16 <-> f16: through float32); the same dtype gives a
 * copy bit for bit. Everything else of m's configuration, and its dropout stream's position
 * (mha_module_set_dropout_rng), is kept. The copy owns all its memory (parameters m has bound
 * with mha_module_param_bind are copied, not bound) and holds no forward to differentiate
 * (mha_module_backward wants a forward of the copy first). m is not changed. For example,
 * float32 training, bf16 inference: mha_module_copy(ctx, m, MHA_DTYPE_BF16, &mb).
 * MHA_ERR_INVALID_ARG (m or out NULL), MHA_ERR_UNSUPPORTED (another dtype), MHA_ERR_NOMEM;
 * *out is NULL on error. Free the copy with mha_module_free. */
MHA_API mha_status mha_module_copy(mha_ctx *ctx, const mha_module *m, mha_dtype dtype,
                                   mha_module **out);
MHA_API void mha_module_free(mha_module *m);
MHA_API const mha_config *mha_module_config(const mha_module *m);

/* Parameters, under PyTorch's names and layouts:
 *   kdim == vdim == E:  "in_proj_weight" [3E, E] (rows: q, k, v), "in_proj_bias" [3E]
 *   otherwise:          "q_proj_weight" [E, E], "k_proj_weight" [E, kdim],
 *                       "v_proj_weight" [E, vdim], "in_proj_bias" [3E]
 *   always:             "out_proj.weight" [E, E], "out_proj.bias" [E]
 * (biases only with cfg.bias). Index i in [0, mha_module_param_count). */
MHA_API int mha_module_param_count(const mha_module *m);
MHA_API const char *mha_module_param_name(const mha_module *m, int i);
/* Views of a parameter's values and of its gradient (either may be NULL; of the module's
 * cfg.dtype), owned by the module and valid until mha_module_free. Writing through value
 * changes the parameter. */
MHA_API mha_status mha_module_param(mha_ctx *ctx, mha_module *m, const char *name,
                                    mha_tensor *value, mha_tensor *grad);
/* Sets every parameter gradient to zero. */
MHA_API void mha_module_zero_grad(mha_module *m);
/* Makes the parameter name use caller-owned memory for its value and/or its gradient (NULL:
 * that one stays as it is), each the parameter's elements (of the module's cfg.dtype: float,
 * or uint16_t bits of bf16 / f16), contiguous in PyTorch's layout: a
 * framework's tensor storage, say, so that neither is ever copied. Forward and backward read
 * the bound value, the backward accumulates into the bound gradient, mha_module_param returns
 * views of them. The memory is used as it is (nothing is copied into it), must stay valid as
 * long as the module may use it (until bound again, or mha_module_free, which never frees it),
 * and must not be changed between a forward and its backward. Nothing is checked here (a
 * framework binds one gradient at a time, the others possibly stale meanwhile):
 * mha_module_backward refuses gradients that overlap a value, each other or its dout.
 * MHA_ERR_NOT_FOUND for an unknown name (the message lists the names). */
MHA_API mha_status mha_module_param_bind(mha_ctx *ctx, mha_module *m, const char *name, void *value,
                                         void *grad);
/* Positions the dropout stream: the next training forward with dropout draws its mask with
 * (seed, offset) (mha_attn_params' seed and offset), the one after with (seed, offset + 1), and
 * so on. A module starts at (cfg.seed, 0). For frameworks that seed every call from their own
 * generator (the Python package draws seed from torch's). */
MHA_API mha_status mha_module_set_dropout_rng(mha_ctx *ctx, mha_module *m, uint64_t seed,
                                              uint64_t offset);

/* Loads parameters from the attention layer prefix picks (mha_st_layer: NULL for a file of one
 * layer) in a safetensors file, e.g. safetensors.torch.save_file(model.state_dict()). Every
 * parameter of m must be there with its shape (biases: see mha_st_layer); other tensors are
 * ignored. A file that records num_heads must record the module's (MHA_ERR_INVALID_ARG). On
 * error the module is unchanged. A bf16 / f16 module (cfg.dtype) gets each value rounded once
 * to its dtype: a BF16 (F16) file's values bit for bit. To keep a bf16 checkpoint in bf16:
 * mha_module_config_from_st, cfg.dtype = MHA_DTYPE_BF16, mha_module_create, mha_module_load
 * (mha_module_create_from_file makes a float32 module). */
MHA_API mha_status mha_module_load(mha_ctx *ctx, mha_module *m, const char *path,
                                   const char *prefix);
/* The parameters as a new collection (copies, under their names, as state_dict(), in the
 * module's dtype), with the metadata {"num_heads": "<H>"}. Free with mha_st_free. */
MHA_API mha_status mha_module_state_dict(mha_ctx *ctx, const mha_module *m, mha_st **out);
/* Saves mha_module_state_dict (through mha_outputs: never a partial file). */
MHA_API mha_status mha_module_save(mha_ctx *ctx, const mha_module *m, const char *path);

typedef struct {
    float scale;           /* 0: 1/sqrt(E/H) */
    int training;          /* nonzero: dropout (cfg.dropout) applies */
    int average_weights;   /* weights averaged over heads (1, default) or per head (0) */
    int save_for_backward; /* 1 (default): keep what mha_module_backward needs */
} mha_forward_opts;

MHA_API mha_forward_opts mha_forward_opts_default(void);

/* Forward: y = out_proj(attention(q_proj(query), k_proj(key), v_proj(value))).
 *   query: [B, L, E] (batch first) or unbatched [L, E]
 *   key:   [B, S, kdim] or [S, kdim]; value: [B, S, vdim] or [S, vdim]
 *          key == value == NULL means self-attention (key = value = query)
 *   mask:  optional (NULL); key_padding [B, S] ([S] unbatched); attn masks [L, S] or
 *          [B*H, L, S] ([H, L, S] unbatched); window and ALiBi slopes ([H] or [B, H]) as in
 *          the core (all copied with save_for_backward)
 *   out:   [B, L, E] or [L, E], overwritten
 *   weights: optional (NULL), overwritten: averaged [B, L, S] / [L, S], or per head
 *          [B, H, L, S] / [H, L, S] (opts->average_weights == 0)
 * With opts->save_for_backward the module keeps copies of the activations the backward needs;
 * the inputs may be freed after the call. Each training forward advances the dropout stream.
 * out and weights must not overlap query, key, value or each other, nor the module's
 * parameters, bound or its own (writing them would change the weights the call still reads;
 * the gradients, which a forward never touches, are not checked): MHA_ERR_INVALID_ARG naming
 * both ("mha_module_forward: out overlaps the module's parameter out_proj.weight (...)"),
 * nothing written.
 * Dtypes: query, key, value and out of the module's cfg.dtype (float32, bf16 or f16; another:
 * MHA_ERR_UNSUPPORTED naming the tensor), weights float32; the backward's dout, dquery, dkey
 * and dvalue too; mha_module_kv_cache_create makes a cache of that dtype. */
MHA_API mha_status mha_module_forward(mha_ctx *ctx, mha_module *m, const mha_forward_opts *opts,
                                      const mha_tensor *query, const mha_tensor *key,
                                      const mha_tensor *value, const mha_mask *mask,
                                      mha_tensor *out, mha_tensor *weights);

/* Backward of the most recent forward (which must have had save_for_backward).
 *   dout: [B, L, E] (as out)
 *   dquery, dkey, dvalue: overwritten, each optional (NULL = not wanted). For self-attention
 *   (key == value == NULL in the forward) dquery receives the whole input gradient and dkey,
 *   dvalue must be NULL. dquery, dkey and dvalue must not overlap dout or each other, nor the
 *   module's parameters or their gradients (MHA_ERR_INVALID_ARG naming both, nothing
 *   written).
 * Parameter gradients are ACCUMULATED (+=) into the module's gradients, as in PyTorch; call
 * mha_module_zero_grad between steps. The gradients (bound ones too) must not overlap dout,
 * any parameter's value or each other (MHA_ERR_INVALID_ARG naming both, nothing written).
 * Any error (an allocation failing too: MHA_ERR_NOMEM, the saved forward kept for a retry)
 * leaves dquery, dkey, dvalue and the module's gradients unchanged. */
MHA_API mha_status mha_module_backward(mha_ctx *ctx, mha_module *m, const mha_tensor *dout,
                                       mha_tensor *dquery, mha_tensor *dkey, mha_tensor *dvalue);

/* Incremental decoding (self-attention, kdim == vdim == E): a cache of H key/value heads of
 * D = E / H features for `batch` sequences of at most `capacity` tokens, of the module's dtype,
 * for mha_module_forward_cached. Free with mha_kv_cache_free. A module with kdim or vdim other
 * than E is MHA_ERR_UNSUPPORTED; otherwise the errors of mha_kv_cache_create (*out NULL). */
MHA_API mha_status mha_module_kv_cache_create(mha_ctx *ctx, const mha_module *m, int64_t batch,
                                              int64_t capacity, mha_kv_cache **out);
/* The causal self-attention forward of the next L tokens of every sequence, query [B, L, E]
 * (batch first; the sequences advance together), against all the tokens before them in cache:
 * projects ONLY these tokens (q, k, v: B * L rows), appends their k, v to the cache, attends
 * causally (bottom-right: token i sees the cache and the new tokens up to itself; mask NULL,
 * or a mask whose window and ALiBi apply; its causal field is ignored, other masks refused) and
 * applies the output projection into out [B, L, E] (overwritten). Feeding a sequence one token
 * (or one chunk) at a time gives what mha_module_forward with a top-left causal mask gives
 * on the whole sequence, up to float rounding. out must not overlap query, the cache or the
 * module's parameters (MHA_ERR_INVALID_ARG). Inference: no dropout, nothing
 * saved for a backward (m's saved forward is kept). On a bad argument (shapes, a cache of other
 * sizes, an overflow: mha_attn_kvcache's checks) the cache and out are unchanged; after
 * MHA_ERR_NOMEM the cache may hold the new tokens. */
MHA_API mha_status mha_module_forward_cached(mha_ctx *ctx, mha_module *m, mha_kv_cache *cache,
                                             const mha_tensor *query, const mha_mask *mask,
                                             mha_tensor *out);

/* A forward's saved state, moved out of its module, so that later forwards do not overwrite it
 * and its backward can run after theirs (autograd calls a layer several times, then runs the
 * backwards in any order). */
typedef struct mha_module_saved mha_module_saved;
/* Moves the most recent forward's saved state (opts->save_for_backward) out of m into *out; m
 * then has no saved forward, and its next forward allocates buffers of its own. MHA_ERR_STATE
 * when there is none. Free with mha_module_saved_free, or give back with ..._restore. */
MHA_API mha_status mha_module_saved_take(mha_ctx *ctx, mha_module *m, mha_module_saved **out);
/* Makes s m's saved forward again, for mha_module_backward (which keeps its buffers for reuse,
 * as after a forward). Takes ownership of s on success (do not free it then); m's own saved
 * forward, if any, is released. s must have been taken from m (MHA_ERR_INVALID_ARG, s
 * untouched). The parameters must be the same values as at that forward (not checked). */
MHA_API mha_status mha_module_saved_restore(mha_ctx *ctx, mha_module *m, mha_module_saved *s);
MHA_API void mha_module_saved_free(mha_module_saved *s); /* NULL-safe */

/* ---------------------------------------------------------------------------------------------
 * Arrays and files: .npy and safetensors (untrusted input: every field is validated)
 * ------------------------------------------------------------------------------------------- */
/* Every dtype safetensors defines (mha_dtype, with the tensor views) is a storage type: a whole
 * model's file (int64 position_ids, bf16 or fp8 weights) loads, and mha_st_layer converts bf16,
 * f16 and f64 parameters to float32. The .npy code reads and writes the dtypes NumPy has;
 * bfloat16 and the fp8 types (no NumPy dtype) are MHA_ERR_UNSUPPORTED there. */

/* An owned n-dimensional array; free with mha_array_free. */
typedef struct {
    mha_dtype dtype;
    int ndim;
    int64_t shape[MHA_MAX_DIMS];
    void *data; /* numel * element size bytes, C order, little-endian */
} mha_array;

MHA_API int64_t mha_array_numel(const mha_array *a);
MHA_API size_t mha_dtype_size(mha_dtype dt);
/* "float32", "bool", "int32", "float64", "float16", "bfloat16", "int64", "uint8", "int8",
 * "int16", "uint16", "uint32", "uint64", "float8_e4m3fn", "float8_e5m2" (PyTorch's names);
 * "unknown" for another value (and mha_dtype_size 0). */
MHA_API const char *mha_dtype_name(mha_dtype dt);
/* Allocates a zeroed array. */
MHA_API mha_status mha_array_alloc(mha_ctx *ctx, mha_dtype dt, int ndim, const int64_t *shape,
                                   mha_array *out);
MHA_API void mha_array_free(mha_array *a); /* frees data and zeroes the struct; NULL-safe */

/* The writer callback: called with consecutive chunks; returns 0 on success. */
typedef int (*mha_write_fn)(void *user, const void *data, size_t size);

/* .npy (format versions 1.0-3.0; C order only; the dtypes above that NumPy has: <f4, |b1,
 * <i4, <f8, <f2, <i8, |u1, |i1, <i2, <u2, <u4, <u8; writing bfloat16 or fp8 is
 * MHA_ERR_UNSUPPORTED). Loading checks
 * the magic and the header size before reading the rest of the file. */
MHA_API mha_status mha_npy_load(mha_ctx *ctx, const char *path, mha_array *out);
MHA_API mha_status mha_npy_parse(mha_ctx *ctx, const void *buf, size_t len, mha_array *out);
MHA_API mha_status mha_npy_write(mha_ctx *ctx, const mha_array *a, mha_write_fn fn, void *user);
/* Saves one file through mha_outputs (below): an error never leaves a partial file nor
 * changes an earlier one. */
MHA_API mha_status mha_npy_save(mha_ctx *ctx, const char *path, const mha_array *a);

/* safetensors: a collection of named arrays, and the file's string metadata
 * ("__metadata__", e.g. {"num_heads": "8"}). Loading checks the header size first. A file
 * torch.save wrote (a zip archive or a pickle) is MHA_ERR_FORMAT with the python command that
 * converts it. mha_st_layer (in the module section) picks one attention layer out of a model's
 * collection. */
typedef struct mha_st mha_st;
MHA_API mha_status mha_st_create(mha_ctx *ctx, mha_st **out);
MHA_API mha_status mha_st_load(mha_ctx *ctx, const char *path, mha_st **out);
MHA_API mha_status mha_st_parse(mha_ctx *ctx, const void *buf, size_t len, mha_st **out);
MHA_API void mha_st_free(mha_st *st);
MHA_API int mha_st_count(const mha_st *st);
/* The i-th name, i in [0, mha_st_count), in strcmp order; NULL out of range. Owned by st. */
MHA_API const char *mha_st_name(const mha_st *st, int i);
/* The array named name, or NULL. Owned by st. */
MHA_API const mha_array *mha_st_find(const mha_st *st, const char *name);
/* Adds (or replaces) name with a copy of a. name must be UTF-8 (the reader requires it:
 * MHA_ERR_INVALID_ARG otherwise, st unchanged) and not "__metadata__". */
MHA_API mha_status mha_st_set(mha_ctx *ctx, mha_st *st, const char *name, const mha_array *a);
/* The metadata value of key, or NULL. Owned by st. */
MHA_API const char *mha_st_meta_get(const mha_st *st, const char *key);
/* Adds (or replaces) a metadata entry; value NULL removes key. Keys and values are UTF-8
 * strings (the format's rule: MHA_ERR_INVALID_ARG otherwise); written in strcmp order of the
 * keys. */
MHA_API mha_status mha_st_meta_set(mha_ctx *ctx, mha_st *st, const char *key, const char *value);
/* Number of metadata entries, and the i-th key in strcmp order (NULL out of range). */
MHA_API int mha_st_meta_count(const mha_st *st);
MHA_API const char *mha_st_meta_key(const mha_st *st, int i);
MHA_API mha_status mha_st_write(mha_ctx *ctx, const mha_st *st, mha_write_fn fn, void *user);
/* Saves one file through mha_outputs, as mha_npy_save. */
MHA_API mha_status mha_st_save(mha_ctx *ctx, const mha_st *st, const char *path);

/* ---------------------------------------------------------------------------------------------
 * A key/value cache object (for mha_attn_kvcache; declared with the core)
 * ------------------------------------------------------------------------------------------- */
/* A key/value cache owned by the library: contiguous k [B, Hkv, capacity, D] and
 * v [B, Hkv, capacity, Dv] of float32, bfloat16 or float16 elements, and each sequence's length
 * (starting at 0).
 *     mha_kv_cache *c;
 *     mha_kv_cache_create(ctx, 1, 4096, 8, 128, 128, MHA_DTYPE_BF16, &c);
 *     mha_mask mask = mha_mask_default();
 *     mask.causal = MHA_CAUSAL_BOTTOM_RIGHT;  (a prompt of several tokens: causal among them;
 *                                              without it they see each other, as FlashAttention)
 *     for each step: mha_kv_cache_attend(ctx, NULL, c, &q, &k_new, &v_new, &mask, &out, NULL);
 *     mha_kv_cache_free(c);
 * One thread at a time per cache. */
/* batch, capacity >= 1 tokens per sequence, kv_heads >= 1, head_dim >= 1, head_dim_v >= 0.
 * dtype: MHA_DTYPE_F32, MHA_DTYPE_BF16 or MHA_DTYPE_F16 (elements of 4 or 2 bytes; another is
 * MHA_ERR_UNSUPPORTED); q, k_new, v_new and out of mha_kv_cache_attend must then have it too
 * (mha_attn_kvcache's dtypes). mha_module_forward_cached takes caches of the module's dtype
 * (mha_module_kv_cache_create makes one). The
 * memory is allocated now (MHA_ERR_NOMEM on failure or overflow), zeroed. */
MHA_API mha_status mha_kv_cache_create(mha_ctx *ctx, int64_t batch, int64_t capacity,
                                       int64_t kv_heads, int64_t head_dim, int64_t head_dim_v,
                                       mha_dtype dtype, mha_kv_cache **out);
MHA_API void mha_kv_cache_free(mha_kv_cache *c); /* NULL-safe */
/* Every sequence's length back to 0 (the memory is kept, not cleared). NULL-safe. */
MHA_API void mha_kv_cache_reset(mha_kv_cache *c);
/* The tokens cached for sequence b; -1 for a NULL cache or b outside [0, batch). */
MHA_API int64_t mha_kv_cache_length(const mha_kv_cache *c, int64_t b);
/* Views of the cache's memory: k [B, Hkv, capacity, D], v [B, Hkv, capacity, Dv] (either may be
 * NULL), of the cache's dtype (mha_tensor_typed: use .ptr for bfloat16 / float16), valid until
 * mha_kv_cache_free; rows at and past a sequence's length are unspecified. */
MHA_API mha_status mha_kv_cache_views(mha_ctx *ctx, mha_kv_cache *c, mha_tensor *k, mha_tensor *v);
/* Appends k_new, v_new ([B, Hkv, Lnew, D / Dv], or both NULL) to every sequence and attends q
 * [B, H, L, D] to the whole cache: mha_attn_kvcache on the cache's buffers and lengths. The
 * lengths advance by Lnew only on success; on an argument error nothing is written; after
 * MHA_ERR_NOMEM (a prefill's, see mha_attn_kvcache) the rows past the lengths may hold the new
 * tokens, the lengths and the rows below them unchanged. Errors name what the caller passed:
 * "mha_kv_cache_attend: q.shape[0]: got 1, expected 2 (the cache's batch)", "...: the cache is
 * full: sequence 0 holds 2 of its 2 rows, 1 new tokens do not fit (cache overflow: ...)". */
MHA_API mha_status mha_kv_cache_attend(mha_ctx *ctx, const mha_attn_params *p, mha_kv_cache *c,
                                       const mha_tensor *q, const mha_tensor *k_new,
                                       const mha_tensor *v_new, const mha_mask *mask,
                                       mha_tensor *out, mha_tensor *lse);

/* ---------------------------------------------------------------------------------------------
 * Outputs written all or nothing (what the savers above and the mha tool use)
 *
 *     mha_outputs *o;  int y, g;
 *     mha_outputs_create(ctx, &o);
 *     mha_outputs_add(ctx, o, "y.npy", &y);             // checks the destination now
 *     mha_outputs_add(ctx, o, "grads.safetensors", &g);
 *     ... compute ...
 *     mha_outputs_write_npy(ctx, o, y, &ya);            // a synced temporary beside y.npy
 *     mha_outputs_write_st(ctx, o, g, grads);
 *     mha_outputs_commit(ctx, o);                       // every file replaced, or none
 *     mha_outputs_free(o);                              // removes what was not committed
 *
 * What is guaranteed:
 *   - Destinations are new names in existing directories, or existing regular files (through a
 *     symbolic link: the file it names is replaced, the link stays; a dangling link's target
 *     is created, in a directory that exists, as a shell's > would). A directory, device, FIFO
 *     or socket is refused (MHA_ERR_IO), never replaced nor written through: `--out /dev/null`
 *     fails even as root.
 *   - Two outputs are never the same file: paths are compared resolved (".", "..", symbolic
 *     links) and, for existing files, by device and inode (hard links): MHA_ERR_INVALID_ARG.
 *   - Each output is written to "<its directory>/.mha-tmp-XXXXXX" (a short name: any valid
 *     file name works), created with mode 0666 less the umask. A file that replaces another
 *     takes the replaced file's permission bits (0777 part; owner, ACLs and set-id bits are
 *     not carried over). Data is written, fsync'd and closed; a failure reports the errno of
 *     the call that failed ("write: No space left on device").
 *   - Every check that can fail is made before anything is renamed, when an output is added
 *     and again at the commit: all written, each destination still absent or the same regular
 *     file, its directory writable, and in a sticky directory (/tmp) the file or the directory
 *     this process's own (else MHA_ERR_IO, EPERM). The commit keeps a hard link to each file it
 *     replaces (renames it aside where hard links are not supported), then renames the
 *     temporaries into place one by one. If a rename still fails (EBUSY, EIO, ...), the files
 *     already replaced are put back, new ones removed, and the message ends with "nothing was
 *     replaced". Then each directory is fsync'd.
 *   - Not covered: a crash or power loss during the commit (some outputs may be replaced, and
 *     .mha-tmp-* / .mha-old-* files may remain); a failure to put an old file back (reported:
 *     its content is in the .mha-old-* file beside it, which is also left when it cannot be
 *     removed); other programs writing the same files meanwhile.
 * After a commit, failed or not, the collection is empty again and may be reused. One thread
 * at a time per collection.
 * ------------------------------------------------------------------------------------------- */
typedef struct mha_outputs mha_outputs;
MHA_API mha_status mha_outputs_create(mha_ctx *ctx, mha_outputs **out);
/* Removes every temporary not committed; NULL-safe. */
MHA_API void mha_outputs_free(mha_outputs *o);
/* Declares an output file (copies path) and checks its destination as described above;
 * *index (may be NULL) receives its number, 0, 1, ... in order of declaration. */
MHA_API mha_status mha_outputs_add(mha_ctx *ctx, mha_outputs *o, const char *path, int *index);
/* The index of the declared output that is the same file as path, or -1 (none, or path cannot
 * be an output). Sets no message. */
MHA_API int mha_outputs_find(const mha_outputs *o, const char *path);
MHA_API int mha_outputs_count(const mha_outputs *o);
/* Writes output index into its temporary (again: replaces the earlier temporary). On failure
 * that output's temporary is removed and the destination untouched. */
MHA_API mha_status mha_outputs_write_npy(mha_ctx *ctx, mha_outputs *o, int index,
                                         const mha_array *a);
MHA_API mha_status mha_outputs_write_st(mha_ctx *ctx, mha_outputs *o, int index, const mha_st *st);
/* Any other content: fn writes through (write, user), e.g. with mha_npy_write or a renderer,
 * and returns MHA_OK, or an error (with a message in ctx when it has one). */
typedef mha_status (*mha_output_fn)(mha_ctx *ctx, void *arg, mha_write_fn write, void *user);
MHA_API mha_status mha_outputs_write(mha_ctx *ctx, mha_outputs *o, int index, mha_output_fn fn,
                                     void *arg);
/* Replaces every declared destination by its temporary, or none (see above). MHA_ERR_STATE
 * when an output was declared but not written. */
MHA_API mha_status mha_outputs_commit(mha_ctx *ctx, mha_outputs *o);

#ifdef __cplusplus
}
#endif
#endif /* MHA_H */
