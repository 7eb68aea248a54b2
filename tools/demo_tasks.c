/* demo_tasks.c - the tasks of `mha demo` (see demo_tasks.h): each a generator, the places its
 * answers come from, and labels. */
#include "demo_tasks.h"

#include <assert.h>
#include <stdio.h>
#include <string.h>

#define LEN 8 /* every task below uses sequences of 8 tokens */

static uint64_t rng_next(demo_rng *r) { return demo_hash(r->key, 0, r->k++); }

/* Uniform in 0 .. n-1 (n small: the modulo bias of 64 random bits is negligible). */
static int32_t rng_below(demo_rng *r, int32_t n) {
    return (int32_t)((rng_next(r) >> 16) % (uint64_t)n);
}

static void digit_label(int32_t t, char *buf) { snprintf(buf, DEMO_LABEL_CAP, "%d", (int)t); }

/* ---------------------------------------------------------------------------------------------
 * reverse: tok = 8 digits, answer i = tok[7 - i]. Only the position tells where the answer is.
 * ------------------------------------------------------------------------------------------- */
static void reverse_generate(demo_rng *r, int32_t *tok, int32_t *tgt) {
    for (int i = 0; i < LEN; i++) tok[i] = rng_below(r, 10);
    for (int i = 0; i < LEN; i++) tgt[i] = tok[LEN - 1 - i];
}

static void reverse_where(const int32_t *tok, int role, int i, unsigned char *look) {
    (void)tok, (void)role;
    for (int j = 0; j < LEN; j++) look[j] = j == LEN - 1 - i;
}

/* ---------------------------------------------------------------------------------------------
 * lookup: 8 key:value pairs, each of the keys A, B, C, D twice, in a random order, each with a
 * random digit; token = 10 * key + value ("C7" = 27). Answer i = the value of the other pair
 * with the key of pair i. Where to look depends on the tokens, not on the positions (apart from
 * not looking at oneself).
 * ------------------------------------------------------------------------------------------- */
#define LOOKUP_KEYS 4

static void lookup_generate(demo_rng *r, int32_t *tok, int32_t *tgt) {
    int32_t key[LEN];
    for (int i = 0; i < LEN; i++) key[i] = i / 2;
    for (int i = LEN - 1; i > 0; i--) { /* Fisher-Yates */
        const int j = rng_below(r, i + 1);
        const int32_t k = key[i];
        key[i] = key[j];
        key[j] = k;
    }
    for (int i = 0; i < LEN; i++) tok[i] = 10 * key[i] + rng_below(r, 10);
    for (int i = 0; i < LEN; i++)
        for (int j = 0; j < LEN; j++)
            if (j != i && key[j] == key[i]) tgt[i] = tok[j] % 10;
}

static void lookup_where(const int32_t *tok, int role, int i, unsigned char *look) {
    (void)role;
    for (int j = 0; j < LEN; j++) look[j] = j != i && tok[j] / 10 == tok[i] / 10;
}

/* No pair mirrored (at i and 7 - i: the reversal's pattern) nor side by side (a diagonal next
 * to the main one): the picture cannot be read as a positional pattern. */
static int lookup_telling(const int32_t *tok) {
    for (int i = 0; i < LEN; i++)
        for (int j = i + 1; j < LEN; j++)
            if (tok[i] / 10 == tok[j] / 10 && (j == LEN - 1 - i || j == i + 1)) return 0;
    return 1;
}

static void lookup_token_label(int32_t t, char *buf) {
    snprintf(buf, DEMO_LABEL_CAP, "%c%d", 'A' + (int)(t / 10), (int)(t % 10));
}

/* ---------------------------------------------------------------------------------------------
 * prevmax: tok = 8 digits; answer i = (the digit before i, the largest digit), one of 100
 * classes 10 * before + largest; position 0, with no digit before it, has no answer. A head
 * returns a weighted mean of its values, which cannot say which of two digits came from where:
 * two heads are needed, one looking one position back, one looking at the largest digit.
 * ------------------------------------------------------------------------------------------- */
static void prevmax_generate(demo_rng *r, int32_t *tok, int32_t *tgt) {
    int32_t mx = 0;
    for (int i = 0; i < LEN; i++) {
        tok[i] = rng_below(r, 10);
        if (tok[i] > mx) mx = tok[i];
    }
    tgt[0] = -1;
    for (int i = 1; i < LEN; i++) tgt[i] = 10 * tok[i - 1] + mx;
}

static void prevmax_where(const int32_t *tok, int role, int i, unsigned char *look) {
    int32_t mx = 0;
    for (int j = 0; j < LEN; j++)
        if (tok[j] > mx) mx = tok[j];
    for (int j = 0; j < LEN; j++) look[j] = role == 0 ? j == i - 1 : tok[j] == mx;
}

static void prevmax_answer_label(int32_t c, char *buf) {
    snprintf(buf, DEMO_LABEL_CAP, "%d,%d", (int)(c / 10), (int)(c % 10));
}

/* ---------------------------------------------------------------------------------------------
 * The table
 * ------------------------------------------------------------------------------------------- */
/* Every task keeps demo_config_default's model (E = 32, 2 heads, Adam lr 1e-2) and sizes only
 * its vocabulary, answers and length; prevmax also lowers the attention dropout: 0.1 sometimes
 * leaves a head doing a bit of both parts (and slows the training), 0.05 gave two clean heads
 * on every seed tried. */
/* Every task keeps demo_config_default's model (E = 32, 2 heads, Adam lr 1e-2) and sizes only
 * its vocabulary, answers and length. prevmax lowers the attention dropout: 0.1 sometimes leaves
 * a head doing a bit of both parts (and slows the training down), 0.05 gave two clean heads on
 * every seed tried (1 to 10). */
static const demo_task tasks[] = {
    {.name = "reverse",
     .goal = "reverse 8 digits",
     .explain = "query i should look at key 7 - i, whatever the digits are",
     .vocab = 10,
     .classes = 10,
     .len = LEN,
     .dropout = 0.1f,
     .steps = 3000,
     .nroles = 1,
     .role = {"the mirrored key (7 - i)"},
     .generate = reverse_generate,
     .where = reverse_where,
     .token_label = digit_label,
     .answer_label = digit_label},
    {.name = "lookup",
     .goal = "answer each key:value pair with the value of the other pair of its key",
     .explain = "query C7 should look at the other C, wherever it is: a match of contents",
     .vocab = 10 * LOOKUP_KEYS,
     .classes = 10,
     .len = LEN,
     .dropout = 0.1f,
     .steps = 6000,
     .nroles = 1,
     .role = {"the other pair with the same key"},
     .generate = lookup_generate,
     .where = lookup_where,
     .token_label = lookup_token_label,
     .answer_label = digit_label,
     .telling = lookup_telling},
    {.name = "prevmax",
     .goal = "answer each digit with the digit before it and the largest digit",
     .explain = "one head should look one key back, the other at the largest digit",
     .vocab = 10,
     .classes = 100,
     .len = LEN,
     .dropout = 0.05f,
     .steps = 6000,
     .nroles = 2,
     .role = {"the digit before", "the largest digit"},
     .generate = prevmax_generate,
     .where = prevmax_where,
     .token_label = digit_label,
     .answer_label = prevmax_answer_label},
};

int demo_task_count(void) { return (int)(sizeof tasks / sizeof tasks[0]); }

const demo_task *demo_task_at(int i) { return i >= 0 && i < demo_task_count() ? &tasks[i] : NULL; }

const demo_task *demo_task_find(const char *name) {
    for (int i = 0; i < demo_task_count(); i++)
        if (strcmp(tasks[i].name, name) == 0) return &tasks[i];
    return NULL;
}

demo_config demo_task_config(const demo_task *t, uint64_t seed) {
    demo_config c = demo_config_default();
    c.vocab = t->vocab;
    c.classes = t->classes;
    c.len = t->len;
    c.dropout = t->dropout;
    c.seed = seed;
    /* The demo's fixed-size arrays (examples, their attention, labels) are sized by these. */
    assert(c.len <= DEMO_MAX_LEN && c.heads <= DEMO_MAX_HEADS);
    return c;
}

/* Draws sequences from the stream's index idx (attempt 0, 1, ...) until one falls on the asked
 * side: the lowest bit of a hash of its tokens. Each attempt is a fair coin, so two on average. */
void demo_task_sequence(const demo_task *t, uint64_t seed, uint64_t stream, uint64_t idx,
                        int held_out, int32_t *tokens, int32_t *targets) {
    int32_t tgt[DEMO_MAX_LEN];
    for (uint64_t attempt = 0;; attempt++) {
        demo_rng r = {demo_hash(seed, 1000 + stream, idx) ^ demo_hash(attempt, 77, 0), 0};
        t->generate(&r, tokens, tgt);
        uint64_t h = 0x6d6861ull;
        for (int i = 0; i < t->len; i++) h = demo_hash(h, (uint64_t)tokens[i], (uint64_t)i);
        if ((int)(h & 1) == (held_out != 0)) break;
    }
    if (targets) memcpy(targets, tgt, (size_t)t->len * sizeof *targets);
}
