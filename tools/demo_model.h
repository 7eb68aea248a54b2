/* demo_model.h - the tiny model that `mha demo` trains from random initialization: one mha
 * attention layer between embeddings and a linear readout. What it learns is up to the task
 * (tools/demo_tasks.h): the data says where each position has to look.
 *
 *   tokens t: [B, L] in 0 .. V-1     targets: [B, L] in 0 .. C-1, or -1 (no answer there)
 *   x      = tok_emb[t] + pos_emb[i]                       [B, L, E]
 *   y      = MultiheadAttention(x, x, x)  (mha_module_*)   [B, L, E]  self-attention, no mask
 *   logits = y readout.weight^T + readout.bias             [B, L, C]
 *   loss   = mean over the answered positions of cross_entropy(logits, target)
 *
 * There is no residual connection: the readout sees only what the heads fetched, so every
 * answer has to come through the attention, and the pictures of the weights show how.
 *
 * Everything is deterministic for a given seed: the weights and the data come from a
 * counter-based hash and the library gives bitwise-identical results for any thread count.
 * Nothing here prints. */
#ifndef MHA_DEMO_MODEL_H
#define MHA_DEMO_MODEL_H

#include "mha.h"

#include <stdint.h>

typedef struct {
    int vocab;     /* V: input tokens 0 .. V-1 */
    int classes;   /* C: answers 0 .. C-1 */
    int len;       /* L: sequence length, 1 .. 256 */
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

/* Random numbers: a hash of (seed, stream, index), so that any weight or sequence can be drawn
 * on its own, in any order, with the same result (splitmix64's finalizer). */
uint64_t demo_hash(uint64_t seed, uint64_t stream, uint64_t idx);
/* Uniform in [0, 1) from the 53 high bits of a hash. */
double demo_unit(uint64_t h);

/* Forward over B sequences (B <= max_batch): *loss = mean cross-entropy over the answered
 * positions (targets >= 0; 0 when there are none), *correct = how many of them have the target
 * as their argmax, *answered = how many there are (each pointer may be NULL). With backward != 0
 * the gradients of the loss are ADDED to every parameter's grad (call demo_model_zero_grad).
 * MHA_ERR_INVALID_ARG for a token outside 0 .. V-1 or a target outside -1 .. C-1. */
mha_status demo_model_loss(mha_ctx *ctx, demo_model *m, int B, const int32_t *tokens,
                           const int32_t *targets, int backward, double *loss, int64_t *correct,
                           int64_t *answered);

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
