/* module_internal.h - the mha_module object, shared by module.c (create, parameters, forward,
 * backward) and module_io.c (safetensors load and save). Internal: never installed.
 *
 * PARAMETERS (PyTorch's nn.MultiheadAttention names and layouts)
 *   packed   (kdim == vdim == E): in_proj_weight [3E, E] whose row blocks are Wq, Wk, Wv
 *   separate (otherwise):        q_proj_weight [E, E], k_proj_weight [E, kdim],
 *                                v_proj_weight [E, vdim]
 *   in_proj_bias [3E] (bq, bk, bv), out_proj.weight [E, E], out_proj.bias [E]; the biases
 *   exist only with cfg.bias. Each parameter owns one value buffer and one gradient buffer;
 *   wq/wk/wv (and their gradients) point into in_proj_weight when packed.
 */
#ifndef MHA_MODULE_INTERNAL_H
#define MHA_MODULE_INTERNAL_H

#include "core/internal.h"
#include "attn/gemm.h"

#define MHA__MOD_MAX_PARAMS 6

typedef struct {
    const char *name; /* static string */
    int ndim;         /* 1 or 2 */
    int64_t shape[2];
    int64_t numel;
    float *value, *grad;
} mha__param;

/* An owned buffer kept between calls: a call that needs n bytes reuses it when
 * cap / 4 <= n <= cap, else frees it and allocates n (so repeated calls of one shape allocate
 * nothing and touch no fresh pages). */
typedef struct {
    void *p;
    size_t cap; /* bytes */
} mha__buf;

/* What the backward needs from the most recent forward. The buffers (b*) belong to the
 * module and are reused by the next forward; the pointers are views set by each forward. */
typedef struct {
    int64_t B, L, S;
    int unbatched, self_attn;
    const float *x;  /* [B*L, E] query, row stride ldx: a copy (bx), or, in a forward without
                        save_for_backward, the caller's query itself when its rows allow */
    const float *xk, *xv; /* [B*S, kdim], [B*S, vdim] key, value (cross-attention only), the
                             same way (bxk, bxv; ldxk, ldxv) */
    int64_t ldx, ldxk, ldxv;
    float *qkv;      /* self: [B*L, 3E] packed q|k|v (= [B, L, 3, H, D]);
                        cross: q [B*L, E] followed by k, v [B*S, E] each */
    float *q, *k, *v;         /* into qkv */
    int64_t ldq, ldk, ldv;    /* row strides of q, k, v (3E for self-attention, else E) */
    float *attn;     /* [B*L, E] = [B, L, H, D], the core's output */
    float *lse;      /* [B, H, L] */
    mha_mask mask;   /* pointers into the copies (bpad, ...), or, without save_for_backward,
                        into the caller's masks */
    mha_attn_params ap;
    mha__buf bx, bxk, bxv, bqkv, battn, blse, bpad, babool, bklen, bafloat;
} mha__saved;

/* BUFFER REUSE. A forward fills m->st and, with save_for_backward, sets m->saved = &m->st;
 * any other outcome (no save_for_backward, or an error once the buffers are touched) leaves
 * m->saved = NULL, so a backward can only ever see a complete forward. A forward that fails
 * with MHA_ERR_NOMEM releases every kept buffer (the next call starts from nothing, and the
 * memory goes back); a backward that fails with it releases its own temporaries and the
 * packing workspace, never the saved state (the backward can be retried). mha_module_free
 * releases everything. */
struct mha_module {
    mha_config cfg; /* kdim, vdim resolved (never 0) */
    int packed;     /* 1: in_proj_weight; 0: q/k/v_proj_weight */
    int nparams;
    mha__param p[MHA__MOD_MAX_PARAMS];
    float *wq, *wk, *wv, *bin, *wo, *bo;     /* values (bin, bo NULL without bias) */
    float *gwq, *gwk, *gwv, *gbin, *gwo, *gbo; /* gradients */
    uint64_t dropout_offset; /* advances on every training forward with dropout */
    mha__saved *saved;       /* &st: a forward to differentiate; NULL: none */
    mha__saved st;           /* the forward's buffers, kept between calls */
    mha__buf bdy, bda, bdqkv, bacc, bgw, btmp; /* the backward's temporaries, kept */
    mha__gemm_ws gws;        /* the products' packing workspace, kept */
};

/* The parameter named name, or NULL. */
mha__param *mha__module_find_param(const mha_module *m, const char *name);

#endif
