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

#define MHA__MOD_MAX_PARAMS 6

typedef struct {
    const char *name; /* static string */
    int ndim;         /* 1 or 2 */
    int64_t shape[2];
    int64_t numel;
    float *value, *grad;
} mha__param;

/* What the backward needs from the most recent forward (copies: the caller may free its
 * inputs). All buffers are contiguous and owned. */
typedef struct {
    int64_t B, L, S;
    int unbatched, self_attn;
    float *x;        /* [B*L, E]    query */
    float *xk, *xv;  /* [B*S, kdim], [B*S, vdim]  key, value (cross-attention only) */
    float *qkv;      /* self: [B*L, 3E] packed q|k|v (= [B, L, 3, H, D]);
                        cross: q [B*L, E] followed by k, v [B*S, E] each */
    float *q, *k, *v;         /* into qkv */
    int64_t ldq, ldk, ldv;    /* row strides of q, k, v (3E for self-attention, else E) */
    float *attn;     /* [B*L, E] = [B, L, H, D], the core's output */
    float *lse;      /* [B, H, L] */
    mha_mask mask;   /* pointers into the copies below */
    uint8_t *pad, *abool;
    int32_t *klen;
    float *afloat;
    mha_attn_params ap;
} mha__saved;

struct mha_module {
    mha_config cfg; /* kdim, vdim resolved (never 0) */
    int packed;     /* 1: in_proj_weight; 0: q/k/v_proj_weight */
    int nparams;
    mha__param p[MHA__MOD_MAX_PARAMS];
    float *wq, *wk, *wv, *bin, *wo, *bo;     /* values (bin, bo NULL without bias) */
    float *gwq, *gwk, *gwv, *gbin, *gwo, *gbo; /* gradients */
    uint64_t dropout_offset; /* advances on every training forward with dropout */
    mha__saved *saved;       /* NULL: no forward to differentiate */
};

/* The parameter named name, or NULL. */
mha__param *mha__module_find_param(const mha_module *m, const char *name);

#endif
