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
#include "attn/attn_common.h"
#include "attn/gemm.h"

#define MHA__MOD_MAX_PARAMS 6

typedef struct {
    const char *name; /* static string */
    int ndim;         /* 1 or 2 */
    int64_t shape[2];
    int64_t numel;
    void *value, *grad;         /* what the module uses: its own buffers, or bound memory;
                                   elements of the module's dtype (cfg.dtype) */
    void *own_value, *own_grad; /* the buffers the module allocated (and frees) */
} mha__param;

/* An owned buffer kept between calls, holding one planned workspace (src/core/plan.h): a call
 * whose plan needs n bytes reuses it when cap / 4 <= n <= cap, else frees it and allocates n
 * (so repeated calls of one shape allocate nothing and touch no fresh pages). */
typedef struct {
    void *p;
    size_t cap; /* bytes */
} mha__buf;

/* What the backward needs from the most recent forward: views into the forward's kept
 * workspace ws (its regions are declared once, in module.c's fwd_plan), or into the caller's
 * inputs and masks in a forward without save_for_backward. Set by each forward. */
typedef struct {
    int64_t B, L, S;
    int unbatched, self_attn;
    /* Activations are elements of the module's dtype (float32, bf16 or f16), lse float32. */
    const void *x;       /* [B*L, E] query, row stride ldx: a copy, or, in a forward without
                        save_for_backward, the caller's query itself when its rows allow */
    const void *xk, *xv; /* [B*S, kdim], [B*S, vdim] key, value (cross-attention only), the
                             same way (ldxk, ldxv) */
    int64_t ldx, ldxk, ldxv;
    void *q, *k, *v;       /* self: one [B*L, 3E] region of packed q|k|v rows
                                 (= [B, L, 3, H, D]); cross: q [B*L, E], k, v [B*S, E] */
    int64_t ldq, ldk, ldv; /* row strides of q, k, v (3E for self-attention, else E) */
    void *attn;            /* [B*L, E] = [B, L, H, D], the core's output */
    float *lse;            /* [B, H, L] */
    mha_mask mask;         /* pointers into the copies, or, without save_for_backward, into the
                        caller's masks */
    mha_attn_params ap;
    mha__buf ws; /* the forward's kept workspace: every region above, one allocation */
} mha__saved;

/* BUFFER REUSE. A forward fills m->st and, with save_for_backward, sets m->saved = &m->st;
 * any other outcome (no save_for_backward, or an error once the buffers are touched) leaves
 * m->saved = NULL, so a backward can only ever see a complete forward. A forward that fails
 * with MHA_ERR_NOMEM releases every kept buffer (the next call starts from nothing, and the
 * memory goes back); a backward that fails with it releases its own workspace and the
 * packing workspace, never the saved state (the backward can be retried). mha_module_free
 * releases everything. */
struct mha_module {
    mha_config cfg; /* kdim, vdim resolved (never 0) */
    int packed;     /* 1: in_proj_weight; 0: q/k/v_proj_weight */
    int nparams;
    mha__param p[MHA__MOD_MAX_PARAMS];
    size_t es;                                /* bytes per element of cfg.dtype */
    void *wq, *wk, *wv, *bin, *wo, *bo;       /* values (bin, bo NULL without bias) */
    void *gwq, *gwk, *gwv, *gbin, *gwo, *gbo; /* gradients */
    uint64_t dropout_seed;                    /* cfg.seed, or mha_module_set_dropout_rng's */
    uint64_t dropout_offset;                  /* advances on every training forward with dropout */
    mha__saved *saved;                        /* &st: a forward to differentiate; NULL: none */
    mha__saved st;    /* the forward's views and workspace, kept between calls */
    mha__buf fws;     /* the forward's scratch (staging rows for a strided out), kept while
                         calls need it */
    mha__buf bws;     /* the backward's workspace (module.c's bwd_plan), kept */
    mha__gemm_ws gws; /* the products' packing workspace, kept */
    /* The saved forward of mha_mpi_module_forward (src/mpi/module.c, built with MPI; NULL:
     * none), apart from st: only mha_mpi_module_backward differentiates it. mpi_free releases
     * it (mha_module_free must call it: a module freed between the two leaks it otherwise). */
    void *mpi_saved;
    void (*mpi_free)(void *);
};

/* A forward's saved state moved out of its module (mha_module_saved_take). */
struct mha_module_saved {
    const mha_module *owner;
    mha__saved st;
};

/* The parameter named name, or NULL. */
mha__param *mha__module_find_param(const mha_module *m, const char *name);

/* The outputs of a module call (NULL views: not passed) against the module's own memory: every
 * parameter's value (read while outputs are written), bound or owned, and with grads (a
 * backward: it accumulates into them) every gradient. A forward never touches the gradients,
 * which a framework may bind only around its backwards (the Python package does: between
 * two, the bound memory may be freed and reused for a forward's out). MHA_ERR_INVALID_ARG
 * naming the output and the parameter ("fn: out overlaps the module's parameter
 * out_proj.weight (...)"), checked with mha__tensors_overlap, before anything is written; the
 * pairs among the call's own tensors are mha__attn_check_aliases's. */
mha_status mha__module_check_outputs(mha_ctx *ctx, const char *fn, const mha_module *m,
                                     const mha__attn_arg *outs, int nout, int grads);
/* The parameters' gradients, which a backward accumulates into (after reading the values and
 * dout), against every parameter's value, each other and dout: bound memory may share any of
 * them (mha_module_param_bind checks nothing: a framework binds one gradient at a time, the
 * others possibly stale until it binds them too), and a shared element would get a gradient
 * added to a weight, two gradients summed into one place (gw mirrors them by address) or dout
 * overwritten. Checked when all are bound, before anything is written. */
mha_status mha__module_check_grads(mha_ctx *ctx, const char *fn, const mha_module *m,
                                   const mha_tensor *dout);

#endif
