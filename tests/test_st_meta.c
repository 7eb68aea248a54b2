/* test_st_meta.c - safetensors metadata ("__metadata__": string to string) and the number of
 * heads a saved layer records: kept through parse and write, refused when malformed, used when
 * num_heads is 0 and enforced when it is not. */
#define _GNU_SOURCE /* memmem */
#include "harness.h"
#include "core/internal.h"
#include "io_test_util.h"

#include <unistd.h>

/* A safetensors file of one empty F32 tensor "t" with the given header text ({...}). */
static mha_status parse_header(mha_ctx *ctx, const char *json, mha_st **out) {
    unsigned char buf[512];
    size_t n = strlen(json);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)n >> (8 * i));
    memcpy(buf + 8, json, n);
    return mha_st_parse(ctx, buf, 8 + n, out);
}

TEST(metadata_get_set_round_trip) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    mha_st *st;
    ASSERT_OK(ctx, mha_st_create(ctx, &st));
    ASSERT_EQ(mha_st_meta_count(st), 0);
    ASSERT_TRUE(mha_st_meta_get(st, "num_heads") == NULL);
    ASSERT_OK(ctx, mha_st_meta_set(ctx, st, "num_heads", "8"));
    ASSERT_OK(ctx, mha_st_meta_set(ctx, st, "format", "pt"));
    ASSERT_OK(ctx, mha_st_meta_set(ctx, st, "note", "a \"quoted\"\nline"));
    ASSERT_OK(ctx, mha_st_meta_set(ctx, st, "num_heads", "4")); /* replaces */
    ASSERT_OK(ctx, mha_st_meta_set(ctx, st, "gone", "x"));
    ASSERT_OK(ctx, mha_st_meta_set(ctx, st, "gone", NULL)); /* removes */
    ASSERT_OK(ctx, mha_st_meta_set(ctx, st, "never", NULL));
    ASSERT_EQ(mha_st_meta_set(ctx, st, NULL, "x"), MHA_ERR_INVALID_ARG);
    ASSERT_EQ(mha_st_meta_count(st), 3);
    ASSERT_TRUE(!strcmp(mha_st_meta_key(st, 0), "format") &&
                !strcmp(mha_st_meta_key(st, 2), "num_heads") && !mha_st_meta_key(st, 3));
    int64_t s1[1] = {2};
    mha_array a;
    ASSERT_OK(ctx, mha_array_alloc(ctx, MHA_DTYPE_F32, 1, s1, &a));
    ASSERT_OK(ctx, mha_st_set(ctx, st, "t", &a));
    membuf m = membuf_new();
    ASSERT_OK(ctx, mha_st_write(ctx, st, mem_write, &m));
    const char *head = "\"__metadata__\":{\"format\":\"pt\"";
    ASSERT_TRUE(memmem(m.p, m.n, head, strlen(head)) != NULL);
    mha_st *back;
    ASSERT_OK(ctx, mha_st_parse(ctx, m.p, m.n, &back));
    ASSERT_EQ(mha_st_meta_count(back), 3);
    ASSERT_TRUE(!strcmp(mha_st_meta_get(back, "num_heads"), "4"));
    ASSERT_TRUE(!strcmp(mha_st_meta_get(back, "note"), "a \"quoted\"\nline"));
    ASSERT_TRUE(mha_st_find(back, "t") != NULL && mha_st_count(back) == 1);
    /* Metadata alone, and written again byte for byte. */
    membuf m2 = membuf_new();
    ASSERT_OK(ctx, mha_st_write(ctx, back, mem_write, &m2));
    ASSERT_TRUE(m2.n == m.n && !memcmp(m.p, m2.p, m.n));
    mha_st *only;
    ASSERT_OK(ctx, parse_header(ctx, "{\"__metadata__\":{\"k\":\"v\"}}", &only));
    ASSERT_TRUE(mha_st_count(only) == 0 && !strcmp(mha_st_meta_get(only, "k"), "v"));
    mha_st_free(only);
    free(m.p);
    free(m2.p);
    mha_st_free(back);
    mha_st_free(st);
    mha_array_free(&a);
    mha_ctx_free(ctx);
}

TEST(metadata_malformed) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    static const struct {
        const char *json, *needle;
    } cases[] = {
        {"{\"__metadata__\":{\"k\":1}}", "__metadata__: expected a string value"},
        {"{\"__metadata__\":{\"k\":\"a\",\"k\":\"b\"}}", "__metadata__: duplicate key 'k'"},
        {"{\"__metadata__\":{\"k\":\"a\\u0000b\"}}", "__metadata__ value contains \\u0000"},
        {"{\"__metadata__\":{\"k\\u0000\":\"a\"}}", "__metadata__ key contains \\u0000"},
        {"{\"__metadata__\":[]}", "__metadata__: expected an object"},
        {"{\"__metadata__\":{},\"__metadata__\":{}}", "duplicate __metadata__"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mha_st *st = (mha_st *)1;
        ASSERT_EQ(parse_header(ctx, cases[i].json, &st), MHA_ERR_FORMAT);
        ASSERT_TRUE(st == NULL);
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), cases[i].needle);
    }
    /* Allocation failures while parsing metadata: no leak, NOMEM each time until it works. */
    int done = 0;
    for (long k = 0; k < 50 && !done; k++) {
        mha_st *st = NULL;
        mha__fault_after(k);
        mha_status s = parse_header(ctx, "{\"__metadata__\":{\"a\":\"1\",\"b\":\"2\"}}", &st);
        mha__fault_after(-1);
        if (s == MHA_OK) done = mha_st_meta_count(st) == 2;
        else ASSERT_EQ(s, MHA_ERR_NOMEM);
        mha_st_free(st);
    }
    ASSERT_TRUE(done);
    mha_ctx_free(ctx);
}

/* A saved layer records its number of heads; loading uses it and refuses another. */
TEST(module_records_num_heads) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    char path[64];
    snprintf(path, sizeof path, "st-meta-%d.safetensors", (int)getpid());
    mha_config cfg = mha_config_default(16, 4);
    mha_module *a, *b = NULL, *c = NULL;
    ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &a));
    ASSERT_OK(ctx, mha_module_save(ctx, a, path));
    mha_st *st;
    ASSERT_OK(ctx, mha_st_load(ctx, path, &st));
    ASSERT_TRUE(!strcmp(mha_st_meta_get(st, "num_heads"), "4"));
    mha_config got;
    ASSERT_OK(ctx, mha_module_config_from_st(ctx, st, NULL, &got));
    ASSERT_TRUE(got.embed_dim == 16 && got.num_heads == 4 && got.bias == 1);
    ASSERT_OK(ctx, mha_module_create_from_file(ctx, path, NULL, 0, &b)); /* 0: the file's */
    ASSERT_EQ(mha_module_config(b)->num_heads, 4);
    ASSERT_OK(ctx, mha_module_create_from_st(ctx, st, NULL, 4, &c)); /* agreeing */
    mha_module_free(c);
    c = NULL;
    ASSERT_EQ(mha_module_create_from_file(ctx, path, NULL, 2, &c), MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "num_heads: got 2, expected 4 (the number of heads");
    ASSERT_TRUE(c == NULL);
    ASSERT_EQ(mha_module_create_from_file(ctx, path, NULL, 3, &c), MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "expected a divisor of embed_dim = 16");
    ASSERT_EQ(mha_module_create_from_file(ctx, path, NULL, -1, &c), MHA_ERR_INVALID_ARG);
    /* mha_module_load into a module of another head count. */
    mha_config cfg2 = mha_config_default(16, 2);
    mha_module *two;
    ASSERT_OK(ctx, mha_module_create(ctx, &cfg2, &two));
    ASSERT_EQ(mha_module_load(ctx, two, path, NULL), MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "got a module of 2 heads, expected 4");
    /* Without the metadata (a PyTorch export): num_heads is needed, and any divisor works. */
    ASSERT_OK(ctx, mha_st_meta_set(ctx, st, "num_heads", NULL));
    ASSERT_OK(ctx, mha_st_save(ctx, st, path));
    ASSERT_EQ(mha_module_create_from_file(ctx, path, NULL, 0, &c), MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "does not record it in __metadata__");
    ASSERT_OK(ctx, mha_module_create_from_file(ctx, path, NULL, 2, &c));
    ASSERT_OK(ctx, mha_module_load(ctx, two, path, NULL));
    mha_module_free(c);
    c = NULL;
    /* A malformed record is a format error. */
    const char *bad[] = {"x", "0", "3", "", "99999999999"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ASSERT_OK(ctx, mha_st_meta_set(ctx, st, "num_heads", bad[i]));
        ASSERT_EQ(mha_module_create_from_st(ctx, st, NULL, 0, &c), MHA_ERR_FORMAT);
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "__metadata__ num_heads: got");
    }
    mha_st_free(st);
    mha_module_free(two);
    mha_module_free(a);
    mha_module_free(b);
    unlink(path);
    mha_ctx_free(ctx);
}

int main(void) {
    (void)harness_near;
    RUN(metadata_get_set_round_trip);
    RUN(metadata_malformed);
    RUN(module_records_num_heads);
    return harness_report();
}
