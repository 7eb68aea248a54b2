/* demo_tasks.h - what `mha demo --task NAME` can teach its model (tools/demo_model.h).
 *
 * A task is data and nothing else: a generator of (tokens, targets) sequences, the model's
 * sizes, and, to check the pictures, where each answer can be found in the input ("roles": the
 * keys a head doing that part of the work should attend to). The training loop, the accuracy
 * (the share of answered positions whose argmax is the target, on held-out sequences) and the
 * pictures are the same for every task (tools/cmd_demo.c).
 *
 *   reverse  answer i is the digit at L-1-i: a positional head, the anti-diagonal
 *   lookup   key:value pairs, every key twice; answer i is the value of the other pair with the
 *            same key: a content head (where it looks depends on what the tokens are)
 *   prevmax  answer i is the pair (digit before i, largest digit): one head cannot fetch two
 *            digits apart, so the two heads split the work, one positional, one content
 *
 * Held-out sequences are the ones whose hash is odd, training ones the others: the two sets
 * are disjoint by construction, so the held-out accuracy measures what the model learned, not
 * what it memorized. Nothing here prints. */
#ifndef MHA_DEMO_TASKS_H
#define MHA_DEMO_TASKS_H

#include "demo_model.h"

#include <stdint.h>

#define DEMO_MAX_LEN 16   /* the longest sequence of any task */
#define DEMO_MAX_HEADS 4  /* the most heads of any task */
#define DEMO_MAX_ROLES 2  /* the most parts an answer has */
#define DEMO_LABEL_CAP 24 /* a token's or an answer's label, with its NUL */

/* A stream of random numbers: draws k = 0, 1, ... of demo_hash(key, 0, k). */
typedef struct {
    uint64_t key, k;
} demo_rng;

typedef struct {
    const char *name;        /* for --task */
    const char *goal;        /* "reverse 8 digits": what the model learns, after "learns to" */
    const char *explain;     /* how a head can solve it, one line */
    int vocab, classes, len; /* the model's sizes (the rest: demo_config_default's) */
    float dropout;           /* attention dropout while training */
    int64_t steps;           /* the default training budget */
    int nroles;
    const char *role[DEMO_MAX_ROLES]; /* where part r of an answer is: "the mirrored key" */
    /* One sequence: tok [len] in 0 .. vocab-1, tgt [len] in 0 .. classes-1 or -1 (no answer). */
    void (*generate)(demo_rng *r, int32_t *tok, int32_t *tgt);
    /* look [len]: 1 for the keys where part role of the answer at query i is, else 0. */
    void (*where)(const int32_t *tok, int role, int i, unsigned char *look);
    /* Labels, at most DEMO_LABEL_CAP - 1 bytes: a token ("7", "A3") and an answer ("4,9"). */
    void (*token_label)(int32_t t, char *buf);
    void (*answer_label)(int32_t c, char *buf);
    /* Optional (NULL: any): whether a sequence makes a telling example for the pictures (e.g.
     * lookup's, where no answer comes from where reverse's would). */
    int (*telling)(const int32_t *tok);
} demo_task;

int demo_task_count(void);
const demo_task *demo_task_at(int i); /* 0 .. demo_task_count()-1; 0 is the default task */
const demo_task *demo_task_find(const char *name); /* NULL when there is no such task */

/* The model's configuration for a task (its sizes, learning rate and dropout; seed given). */
demo_config demo_task_config(const demo_task *t, uint64_t seed);

/* Sequence idx of a data stream: tokens and targets [len] (targets may be NULL), a training
 * sequence for held_out = 0 and a held-out one for held_out = 1 (never the same). */
void demo_task_sequence(const demo_task *t, uint64_t seed, uint64_t stream, uint64_t idx,
                        int held_out, int32_t *tokens, int32_t *targets);

#endif
