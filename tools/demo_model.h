/* demo_model.h - the tiny model that `mha demo` trains: it learns to reverse a sequence of
 * digits with one mha attention layer, from random initialization, in a second or two.
 *
 *   tokens t: [B, L] digits          targets: [B, L], target[b, i] = t[b, L-1-i]
 *   x      = tok_emb[t] + pos_emb[i]                       [B, L, E]
 *   y      = MultiheadAttention(x, x, x)  (mha_module_*)   [B, L, E]  self-attention, no mask
 *   logits = y readout.weight^T + readout.bias             [B, L, V]
 *   loss   = mean over the B*L positions of cross_entropy(logits, target)
 *
 * The only way to predict digit i is to look at position L-1-i, so a trained head's attention
 * is the anti-diagonal. Training and held-out sequences are disjoint by construction: training
 * sequences have an even digit sum, held-out ones an odd digit sum.
 *
 * Everything is deterministic for a given seed: the data comes from a counter-based hash and
 * the library gives bitwise-identical results for any thread count. Nothing here prints. */
#ifndef MHA_DEMO_MODEL_H
#define MHA_DEMO_MODEL_H

#include "mha.h"

#include <stdint.h>

typedef struct {
    int vocab;     /* V: digits 0 .. V-1 */
    int len;       /* L: sequence length */
    int embed;     /* E */
    int heads;     /* H, E % H == 0 */
    int max_batch; /* the largest B passed to demo_model_loss */
    float lr;      /* Adam */
    float beta1, beta2, eps;
    float dropout; /* attention dropout while training (demo_model_loss with backward) */
    uint64_t seed; /* initialization (the data streams take the seed separately) */
} demo_config;

demo_config demo_config_default(void);

typedef struct demo_model demo_model;

/* One trainable tensor, flat and contiguous: value, its gradient, and its name. */
typedef struct {
    const char *name;
    float *value;
    float *grad;
    int64_t numel;
} demo_param;

mha_status demo_model_create(mha_ctx *ctx, const demo_config *cfg, demo_model **out);
void demo_model_free(demo_model *m);
const demo_config *demo_model_config(const demo_model *m);

int demo_model_param_count(const demo_model *m);
demo_param demo_model_param(const demo_model *m, int i);

/* Sequence idx of a data stream: L digits into tokens, the reversal into targets (either may be
 * NULL). held_out = 0 gives sequences with an even digit sum, 1 with an odd one. */
void demo_sequence(uint64_t seed, uint64_t stream, uint64_t idx, int held_out, int vocab, int len,
                   int32_t *tokens, int32_t *targets);

/* Forward over B sequences (B <= max_batch): *loss = mean cross-entropy (double), *correct =
 * number of positions whose argmax is the target (either may be NULL). With backward != 0 the
 * gradients of the loss are ADDED to every parameter's grad (call demo_model_zero_grad). */
mha_status demo_model_loss(mha_ctx *ctx, demo_model *m, int B, const int32_t *tokens,
                           const int32_t *targets, int backward, double *loss, int64_t *correct);

void demo_model_zero_grad(demo_model *m);
/* One Adam step over every parameter (step counts from 1, for the bias correction). */
void demo_model_adam_step(demo_model *m, int64_t step);

/* The attention layer (an nn.MultiheadAttention(E, H, batch_first=True)). */
const mha_module *demo_model_attn(const demo_model *m);
/* The embedded input of one sequence, the layer's query: x [L, E] (may be NULL: the check of
 * the tokens only). */
mha_status demo_model_embed(const demo_model *m, const int32_t *tokens, float *x);

/* Per-head attention weights of one sequence: weights [H, L, L] (row i: query position i). */
mha_status demo_model_attention(mha_ctx *ctx, demo_model *m, const int32_t *tokens, float *weights);

#endif
