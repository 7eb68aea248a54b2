/* paged_decode.c - decoding two sequences against a paged key/value cache, as an inference
 * engine keeps it: one pool of fixed-size pages, a block table per sequence, a common prompt's
 * full pages shared, each sequence's new tokens in pages of its own. Checked step by step
 * against the same sequences in contiguous caches (mha_attn_kvcache).
 *
 * The pool is FlashAttention's [pages, page rows, kv heads, head dim] memory, passed as the
 * strided view [pages, kv heads, page rows, head dim]; grouped-query heads (8 query heads, 2
 * key/value heads). */
#include <math.h>
#include <mha.h>
#include <stdio.h>
#include <string.h>

enum {
    H = 8,       /* query heads */
    HKV = 2,     /* key/value heads */
    D = 64,      /* head dim */
    PAGE = 16,   /* rows per page */
    PAGES = 8,   /* pages in the pool */
    BLOCKS = 3,  /* blocks per sequence in the table (48 tokens at most) */
    PROMPT = 20, /* the common prompt's tokens: one full page and 4 rows */
    STEPS = 6    /* tokens decoded per sequence */
};

static float pool_k[PAGES][PAGE][HKV][D], pool_v[PAGES][PAGE][HKV][D];
static float flat_k[2][HKV][BLOCKS * PAGE][D], flat_v[2][HKV][BLOCKS * PAGE][D];

static float next_value(void) { /* a fixed pseudo-random sequence in [-1, 1) */
    static unsigned s = 12345;
    s = s * 1103515245u + 12345u;
    return (float)((s >> 8) & 0xffff) / 32768.0f - 1.0f;
}

/* The pool as a [PAGES, HKV, PAGE, D] view of its [PAGES, PAGE, HKV, D] memory. */
static mha_tensor pool_view(float *pool) {
    int64_t shape[4] = {PAGES, HKV, PAGE, D}, stride[4] = {PAGE * HKV * D, D, HKV * D, 1};
    return mha_tensor_strided(pool, 4, shape, stride);
}

int main(void) {
    mha_ctx *ctx;
    if (mha_ctx_create(&ctx) != MHA_OK) return 1;
    mha_attn_params p = mha_attn_params_default(); /* scale 1/sqrt(D) */
    mha_mask causal = mha_mask_default();
    causal.causal = MHA_CAUSAL_BOTTOM_RIGHT;
    mha_tensor kp = pool_view(&pool_k[0][0][0][0]), vp = pool_view(&pool_v[0][0][0][0]);
    int64_t sflat[4] = {2, HKV, BLOCKS * PAGE, D};
    mha_tensor kc = mha_tensor_make(&flat_k[0][0][0][0], 4, sflat);
    mha_tensor vc = mha_tensor_make(&flat_v[0][0][0][0], 4, sflat);

    /* The prompt: sequence 0's prefill writes it into pages 0 and 1 (table {0, 1, 2}). */
    static float q[2 * H * PROMPT * D], kn[2 * HKV * PROMPT * D], vn[2 * HKV * PROMPT * D];
    static float out[2 * H * PROMPT * D], ref[2 * H * PROMPT * D];
    for (int i = 0; i < H * PROMPT * D; i++) q[i] = next_value();
    for (int i = 0; i < HKV * PROMPT * D; i++) kn[i] = next_value(), vn[i] = next_value();
    int32_t table[2][BLOCKS] = {{0, 1, 2}, {0, 3, 4}}, lens[2] = {0, 0};
    int64_t sq[4] = {1, H, PROMPT, D}, sn[4] = {1, HKV, PROMPT, D};
    mha_tensor tq = mha_tensor_make(q, 4, sq), to = mha_tensor_make(out, 4, sq);
    mha_tensor tk = mha_tensor_make(kn, 4, sn), tv = mha_tensor_make(vn, 4, sn);
    mha_status st = mha_attn_kvcache_paged(ctx, &p, &tq, &kp, &vp, &table[0][0], BLOCKS, &tk, &tv,
                                           lens, &causal, &to, NULL);
    /* Sequence 1 shares the full page 0; the prompt's last 4 rows (page 1, which sequence 0 will
     * append to) are copied into its page 3: a page new rows go to must be a sequence's own. */
    memcpy(pool_k[3], pool_k[1], sizeof pool_k[1]), memcpy(pool_v[3], pool_v[1], sizeof pool_v[1]);
    /* The same prompt in both contiguous caches. */
    for (int b = 0; b < 2; b++)
        for (int h = 0; h < HKV; h++)
            for (int j = 0; j < PROMPT; j++)
                for (int x = 0; x < D; x++) {
                    flat_k[b][h][j][x] = kn[(h * PROMPT + j) * D + x];
                    flat_v[b][h][j][x] = vn[(h * PROMPT + j) * D + x];
                }

    /* Decoding: each step, one new token per sequence, appended at cache_seqlens[b]. */
    int64_t s1[4] = {2, H, 1, D}, s2[4] = {2, HKV, 1, D};
    double worst = 0;
    for (int t = 0; st == MHA_OK && t < STEPS; t++) {
        for (int i = 0; i < 2 * H * D; i++) q[i] = next_value();
        for (int i = 0; i < 2 * HKV * D; i++) kn[i] = next_value(), vn[i] = next_value();
        lens[0] = lens[1] = PROMPT + t;
        tq = mha_tensor_make(q, 4, s1), to = mha_tensor_make(out, 4, s1);
        tk = mha_tensor_make(kn, 4, s2), tv = mha_tensor_make(vn, 4, s2);
        mha_tensor tr = mha_tensor_make(ref, 4, s1);
        st = mha_attn_kvcache_paged(ctx, &p, &tq, &kp, &vp, &table[0][0], BLOCKS, &tk, &tv, lens,
                                    &causal, &to, NULL);
        if (st == MHA_OK)
            st = mha_attn_kvcache(ctx, &p, &tq, &kc, &vc, &tk, &tv, lens, &causal, &tr, NULL);
        for (int i = 0; st == MHA_OK && i < 2 * H * D; i++)
            if (fabs((double)out[i] - ref[i]) > worst) worst = fabs((double)out[i] - ref[i]);
    }
    if (st != MHA_OK) {
        fprintf(stderr, "mha: %s\n", mha_ctx_errmsg(ctx));
        mha_ctx_free(ctx);
        return 1;
    }
    /* A page another sequence still reads cannot take new rows: the call is refused, with the
     * entry named, and nothing is written. */
    int32_t shared[2][BLOCKS] = {{0, 1, 2}, {0, 1, 4}};
    lens[0] = lens[1] = PROMPT + STEPS - 10; /* both append into page 1 */
    st = mha_attn_kvcache_paged(ctx, &p, &tq, &kp, &vp, &shared[0][0], BLOCKS, &tk, &tv, lens,
                                &causal, &to, NULL);
    printf("decoded %d tokens of 2 sequences on %d-row pages: max |paged - contiguous| = %.2g\n",
           STEPS, PAGE, worst);
    printf("a written page shared: %s\n", st != MHA_OK ? mha_ctx_errmsg(ctx) : "accepted (wrong)");
    mha_ctx_free(ctx);
    return worst <= 1e-5 && st == MHA_ERR_INVALID_ARG ? 0 : 1;
}
