/* continuous_batching.c - one step of an inference engine serves every running sequence at once:
 * two sequences decode one token each while a new prompt is prefilled in chunks of 8 tokens, all
 * in ONE call to mha_attn_varlen_paged. The keys and values live in a paged cache: a pool of
 * fixed-size pages, a free-page list, and a block table that says which pages hold each
 * sequence's rows; mha_paged_store writes each step's new keys and values into their pages
 * first. Every step is checked against a plain float64 reference.
 *
 * The pool is [pages, kv heads, page rows, head dim], contiguous; grouped-query heads (8 query
 * heads share 2 key/value heads). Random numbers stand in for a model's q, k and v projections. */
#include <math.h>
#include <mha.h>
#include <stdio.h>
#include <string.h>

enum {
    H = 8,                       /* query heads */
    HKV = 2,                     /* key/value heads: query head h reads kv head h / (H / HKV) */
    D = 32,                      /* head dim */
    PAGE = 16,                   /* rows per page */
    PAGES = 32,                  /* pages in the pool */
    MAX_BLOCKS = 4,              /* pages per sequence in the block table: 64 tokens at most */
    BATCH = 3,                   /* sequences */
    CHUNK = 8,                   /* prompt tokens prefilled per step */
    STEPS = 12,                  /* engine steps */
    MAX_ROWS = BATCH - 1 + CHUNK /* query rows in one step, at most */
};

static float pool_k[PAGES][HKV][PAGE][D], pool_v[PAGES][HKV][PAGE][D];
static int32_t free_list[PAGES], n_free;     /* a stack of unused page numbers */
static int32_t table[BATCH][MAX_BLOCKS];     /* block table: -1 where no page is taken yet */
static int32_t n_blocks[BATCH], len[BATCH];  /* pages taken and tokens cached, per sequence */
static int32_t prompt[BATCH] = {37, 20, 29}; /* prompt lengths */
static float q[MAX_ROWS][H][D], out[MAX_ROWS][H][D];

static float next_value(void) { /* a fixed pseudo-random sequence in [-1, 1) */
    static unsigned s = 12345;
    s = s * 1103515245u + 12345u;
    return (float)((s >> 8) & 0xffff) / 32768.0f - 1.0f;
}

/* Where key j of sequence s, kv head h, lives: row j % PAGE of its block j / PAGE's page. */
static float *row_of(float (*pool)[HKV][PAGE][D], int s, int h, int j) {
    return pool[table[s][j / PAGE]][h][j % PAGE];
}

/* Takes pages from the free list until sequence s has room for `rows` tokens. */
static int reserve(int s, int rows) {
    while (n_blocks[s] * PAGE < rows) {
        if (n_free == 0 || n_blocks[s] == MAX_BLOCKS) return 0; /* out of memory: an engine */
        table[s][n_blocks[s]++] = free_list[--n_free];          /* would pause a sequence */
    }
    return 1;
}

/* Gives sequence s's pages back to the free list: the sequence is finished. */
static void release(int s) {
    while (n_blocks[s] > 0) {
        free_list[n_free++] = table[s][--n_blocks[s]];
        table[s][n_blocks[s]] = -1;
    }
    len[s] = 0;
}

/* Appends the next n[s] tokens of each sequence s (their keys and values here random: a model's
 * projections in an engine) in one call: each token's rows go to the slot of its position,
 * page * PAGE + row, looked up in the block table; mha_paged_store copies them there. */
static mha_status append_tokens(mha_ctx *ctx, mha_tensor *k_pages, mha_tensor *v_pages,
                                const int n[BATCH]) {
    static float k[MAX_ROWS][HKV][D], v[MAX_ROWS][HKV][D];
    int64_t slot[MAX_ROWS];
    int64_t rows = 0;
    for (int s = 0; s < BATCH; s++)
        for (int i = 0; i < n[s]; i++, rows++) {
            const int j = len[s]++; /* the token's position in its sequence */
            slot[rows] = (int64_t)table[s][j / PAGE] * PAGE + j % PAGE;
            for (int h = 0; h < HKV; h++)
                for (int x = 0; x < D; x++)
                    k[rows][h][x] = next_value(), v[rows][h][x] = next_value();
        }
    int64_t shape[3] = {rows, HKV, D};
    mha_tensor tk = mha_tensor_make(&k[0][0][0], 3, shape);
    mha_tensor tv = mha_tensor_make(&v[0][0][0], 3, shape);
    return mha_paged_store(ctx, k_pages, v_pages, &tk, &tv, slot);
}

/* The reference, in float64: sequence s's n query rows (from q row r0 on) against its len[s]
 * keys, causal aligned bottom-right: query row i sees keys j <= i + len[s] - n. Returns the
 * largest |out - reference| over those rows. */
static double check(int s, int r0, int n) {
    double worst = 0, score[MAX_BLOCKS * PAGE];
    for (int i = 0; i < n; i++)
        for (int h = 0; h < H; h++) {
            int kvh = h / (H / HKV), last = i + len[s] - n; /* the last key row i may see */
            double top = -INFINITY, sum = 0;
            for (int j = 0; j <= last; j++) {
                const float *k = row_of(pool_k, s, kvh, j);
                double dot = 0;
                for (int x = 0; x < D; x++) dot += (double)q[r0 + i][h][x] * k[x];
                score[j] = dot / sqrt((double)D);
                if (score[j] > top) top = score[j];
            }
            for (int j = 0; j <= last; j++) sum += score[j] = exp(score[j] - top);
            for (int x = 0; x < D; x++) {
                double acc = 0;
                for (int j = 0; j <= last; j++) acc += score[j] * row_of(pool_v, s, kvh, j)[x];
                double err = fabs(acc / sum - out[r0 + i][h][x]);
                if (err > worst) worst = err;
            }
        }
    return worst;
}

int main(void) {
    mha_ctx *ctx;
    if (mha_ctx_create(&ctx) != MHA_OK) return 1;
    mha_attn_params p = mha_attn_params_default(); /* scale 1/sqrt(D) */
    mha_mask mask = mha_mask_default();
    mask.causal = MHA_CAUSAL_BOTTOM_RIGHT; /* each sequence's new rows end at its last key */
    int64_t pool_shape[4] = {PAGES, HKV, PAGE, D};
    mha_tensor k_pages = mha_tensor_make(&pool_k[0][0][0][0], 4, pool_shape);
    mha_tensor v_pages = mha_tensor_make(&pool_v[0][0][0][0], 4, pool_shape);

    /* Setup: every page free, no sequence holds any. Sequences 0 and 1 were prefilled earlier:
     * their prompts' keys and values are already in their pages. Sequence 2 arrives now. */
    for (int i = 0; i < PAGES; i++) free_list[n_free++] = PAGES - 1 - i; /* page 0 on top */
    memset(table, -1, sizeof table);
    for (int s = 0; s < 2; s++) {
        if (!reserve(s, prompt[s])) {
            mha_ctx_free(ctx);
            return 1;
        }
        while (len[s] < prompt[s]) {
            int n[BATCH] = {0};
            n[s] = prompt[s] - len[s] < MAX_ROWS ? prompt[s] - len[s] : MAX_ROWS;
            if (append_tokens(ctx, &k_pages, &v_pages, n) != MHA_OK) {
                fprintf(stderr, "setup: %s\n", mha_ctx_errmsg(ctx));
                mha_ctx_free(ctx);
                return 1;
            }
        }
    }

    int failed = 0;
    for (int t = 0; t < STEPS && !failed; t++) {
        /* 1. How many new tokens each sequence brings: 1 when decoding, the next chunk of its
         * prompt while prefilling. cu_seqlens[s] is where sequence s's query rows start. */
        int32_t cu_seqlens[BATCH + 1] = {0};
        int n_new[BATCH];
        for (int s = 0; s < BATCH; s++) {
            int rest = prompt[s] - len[s];
            n_new[s] = rest <= 0 ? 1 : rest < CHUNK ? rest : CHUNK;
            cu_seqlens[s + 1] = cu_seqlens[s] + n_new[s];
            /* 2. A sequence whose length crosses a page boundary takes a new page. */
            if (!reserve(s, len[s] + n_new[s])) {
                fprintf(stderr, "step %d: sequence %d: no free page\n", t, s);
                failed = 1;
            }
        }
        if (failed) break;
        /* 3. The new tokens' keys and values go into their pages (one call for all of them),
         * their queries into q, packed one sequence after another: q is [Tq, H, D] with
         * Tq = cu_seqlens[BATCH]. */
        if (append_tokens(ctx, &k_pages, &v_pages, n_new) != MHA_OK) {
            fprintf(stderr, "step %d: %s\n", t, mha_ctx_errmsg(ctx));
            failed = 1;
            break;
        }
        for (int r = 0; r < cu_seqlens[BATCH]; r++)
            for (int h = 0; h < H; h++)
                for (int x = 0; x < D; x++) q[r][h][x] = next_value();
        /* 4. One call for the whole batch; len[] is each sequence's key count after the append,
         * so its new rows attend to its whole cache, themselves included (causally). */
        int64_t q_shape[3] = {cu_seqlens[BATCH], H, D};
        mha_tensor tq = mha_tensor_make(&q[0][0][0], 3, q_shape);
        mha_tensor to = mha_tensor_make(&out[0][0][0], 3, q_shape);
        mha_status st = mha_attn_varlen_paged(ctx, &p, &tq, &k_pages, &v_pages, &table[0][0],
                                              MAX_BLOCKS, cu_seqlens, len, BATCH, &mask, &to, NULL);
        if (st != MHA_OK) {
            fprintf(stderr, "step %d: %s\n", t, mha_ctx_errmsg(ctx));
            failed = 1;
            break;
        }
        /* 5. Check every sequence's rows against the reference. */
        double worst = 0;
        for (int s = 0; s < BATCH; s++) {
            double e = check(s, cu_seqlens[s], n_new[s]);
            if (e > worst) worst = e;
        }
        printf(
            "step %2d: %d sequences, %2d query rows (%d+%d+%d), keys %d/%d/%d in %d/%d/%d pages, "
            "max |out - reference| = %.1e\n",
            t, BATCH, cu_seqlens[BATCH], n_new[0], n_new[1], n_new[2], len[0], len[1], len[2],
            n_blocks[0], n_blocks[1], n_blocks[2], worst);
        if (!(worst <= 1e-5)) failed = 1; /* written so that a NaN fails too */
    }

    /* Sequence 1 is done (it produced its end-of-sequence token): its pages go back to the free
     * list, and the next request to arrive can take them. */
    int before = n_free;
    release(1);
    printf("sequence 1 finished: free pages %d -> %d of %d\n", before, n_free, PAGES);
    mha_ctx_free(ctx);
    if (failed) fprintf(stderr, "continuous_batching: FAILED\n");
    return failed;
}
