/* test_layers.c - mha_st_layer: one attention layer found in a collection of any layout and
 * returned in nn.MultiheadAttention's names, float32 (every layout, mixed biases, kdim/vdim,
 * bf16/f16/f64 conversion, the prefix rules and every error with its message), and the module
 * loaders that go through it. The same layouts made by PyTorch modules and run against them:
 * tests/test_checkpoints.py. */
#include "harness.h"
#include "core/internal.h"

#include <math.h>
#include <unistd.h>

enum {
    E = 4
};

/* Element i of the tensor tagged k: distinct values, exact in float32. */
static float val(int k, int64_t i) { return (float)(k * 100 + i) / 64.0f; }

/* Adds name [d0] (d1 == 0) or [d0, d1], float32 values val(k, i). */
static mha_status put(mha_ctx *ctx, mha_st *st, const char *pfx, const char *name, int k,
                      int64_t d0, int64_t d1) {
    int64_t shape[2] = {d0, d1};
    mha_array a;
    mha_status s = mha_array_alloc(ctx, MHA_DTYPE_F32, d1 ? 2 : 1, shape, &a);
    if (s) return s;
    for (int64_t i = 0; i < mha_array_numel(&a); i++) ((float *)a.data)[i] = val(k, i);
    char full[200];
    snprintf(full, sizeof full, "%s%s", pfx, name);
    s = mha_st_set(ctx, st, full, &a);
    mha_array_free(&a);
    return s;
}

/* A layout as a checkpoint names it: weights q, k, v, out (packed: w[0] holds q, k, v and
 * w[1], w[2] are NULL), biases likewise. */
typedef struct {
    const char *layout, *w[4], *b[4];
    int packed, conv1d;
} layout_names;

/* One layout a row (written out again here, not taken from layers.c). */
/* clang-format off */
static const layout_names LAYOUTS[] = {
    {"nn.MultiheadAttention", {"in_proj_weight", 0, 0, "out_proj.weight"},
     {"in_proj_bias", 0, 0, "out_proj.bias"}, 1, 0},
    {"seed", {"W_q.weight", "W_k.weight", "W_v.weight", "W_o.weight"},
     {"W_q.bias", "W_k.bias", "W_v.bias", "W_o.bias"}, 0, 0},
    {"huggingface", {"q_proj.weight", "k_proj.weight", "v_proj.weight", "out_proj.weight"},
     {"q_proj.bias", "k_proj.bias", "v_proj.bias", "out_proj.bias"}, 0, 0},
    {"huggingface", {"q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"},
     {"q_proj.bias", "k_proj.bias", "v_proj.bias", "o_proj.bias"}, 0, 0},
    {"bert", {"self.query.weight", "self.key.weight", "self.value.weight", "output.dense.weight"},
     {"self.query.bias", "self.key.bias", "self.value.bias", "output.dense.bias"}, 0, 0},
    {"bert", {"query.weight", "key.weight", "value.weight", "output.dense.weight"},
     {"query.bias", "key.bias", "value.bias", "output.dense.bias"}, 0, 0},
    {"gpt2", {"c_attn.weight", 0, 0, "c_proj.weight"}, {"c_attn.bias", 0, 0, "c_proj.bias"}, 1, 1},
};
/* clang-format on */
#define NLAYOUTS ((int)(sizeof LAYOUTS / sizeof LAYOUTS[0]))

/* Layer L under pfx: weights tagged 1..4 (q, k, v, out; packed: 1 and 4), biases 5..8 where
 * bias_mask has bit i (packed: bit 0 = the qkv bias), plus tensors of the rest of a model. */
static mha_status put_layer(mha_ctx *ctx, mha_st *st, const char *pfx, const layout_names *L,
                            unsigned bias_mask) {
    mha_status s = MHA_OK;
    if (L->packed)
        s = L->conv1d ? put(ctx, st, pfx, L->w[0], 1, E, 3 * E)
                      : put(ctx, st, pfx, L->w[0], 1, 3 * E, E);
    for (int i = 0; i < 3 && !L->packed && !s; i++) s = put(ctx, st, pfx, L->w[i], 1 + i, E, E);
    if (!s) s = put(ctx, st, pfx, L->w[3], 4, E, E);
    if (!s && L->packed && (bias_mask & 1)) s = put(ctx, st, pfx, L->b[0], 5, 3 * E, 0);
    for (int i = 0; i < 3 && !L->packed && !s; i++)
        if (bias_mask >> i & 1) s = put(ctx, st, pfx, L->b[i], 5 + i, E, 0);
    if (!s && (bias_mask & 8)) s = put(ctx, st, pfx, L->b[3], 8, E, 0);
    /* the rest of a model: a norm, an embedding, an MLP with a c_proj of its own (GPT-2) */
    if (!s) s = put(ctx, st, pfx, "norm.weight", 9, E, 0);
    if (!s) s = put(ctx, st, "", "embed.weight", 10, 7, E);
    if (!s) s = put(ctx, st, "", "mlp.c_proj.weight", 11, 4 * E, E);
    return s;
}

/* The expected in_proj_weight [3E, E] of put_layer's weights (Conv1D: transposed). */
static float want_in_proj(const layout_names *L, int64_t r, int64_t c) {
    if (L->conv1d) return val(1, c * 3 * E + r);
    if (L->packed) return val(1, r * E + c);
    return val(1 + (int)(r / E), (r % E) * E + c);
}

/* Checks that a is float32 [d0] or [d0, d1] (d1 == 0: 1-D) with a[i] == want(i). */
#define EXPECT_ARRAY(a, d0, d1, want_expr)                                                         \
    do {                                                                                           \
        const mha_array *x_ = (a);                                                                 \
        ASSERT_TRUE(x_ != NULL && x_->dtype == MHA_DTYPE_F32);                                     \
        ASSERT_EQ(x_->ndim, (d1) ? 2 : 1);                                                         \
        ASSERT_EQ(x_->shape[0], d0);                                                               \
        if (d1) ASSERT_EQ(x_->shape[1], d1);                                                       \
        const int64_t c_ = (d1) ? (d1) : 1;                                                        \
        for (int64_t r = 0; r < (d0); r++)                                                         \
            for (int64_t c = 0; c < c_; c++) {                                                     \
                float got_ = ((const float *)x_->data)[r * c_ + c], want_ = (want_expr);           \
                if (memcmp(&got_, &want_, sizeof got_)) {                                          \
                    FAILF("%s[%lld, %lld]: got %g, expected %g", #a, (long long)r, (long long)c,   \
                          got_, want_);                                                            \
                    return;                                                                        \
                }                                                                                  \
            }                                                                                      \
    } while (0)

/* Each layout, with every bias, under a model's prefix: nn.MultiheadAttention's names,
 * values in place (GPT-2's transposed), the metadata. */
TEST(every_layout) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    const char *pfx = "model.layers.3.attn.";
    for (int k = 0; k < NLAYOUTS; k++) {
        const layout_names *L = &LAYOUTS[k];
        mha_st *st, *out = NULL;
        ASSERT_OK(ctx, mha_st_create(ctx, &st));
        ASSERT_OK(ctx, put_layer(ctx, st, pfx, L, 0xf));
        ASSERT_OK(ctx, mha_st_meta_set(ctx, st, "num_heads", "2"));
        const char *prefixes[] = {NULL, "", "model.layers.3.attn", pfx, "model.layers.3"};
        for (size_t p = 0; p < sizeof prefixes / sizeof prefixes[0]; p++) {
            mha_st_free(out);
            out = NULL;
            ASSERT_OK(ctx, mha_st_layer(ctx, st, prefixes[p], &out));
        }
        ASSERT_EQ(mha_st_count(out), 4);
        EXPECT_ARRAY(mha_st_find(out, "in_proj_weight"), 3 * E, E, want_in_proj(L, r, c));
        EXPECT_ARRAY(mha_st_find(out, "out_proj.weight"), E, E,
                     val(4, L->conv1d ? c * E + r : r * E + c));
        EXPECT_ARRAY(mha_st_find(out, "in_proj_bias"), 3 * E, 0,
                     L->packed ? val(5, r) : val(5 + (int)(r / E), r % E));
        EXPECT_ARRAY(mha_st_find(out, "out_proj.bias"), E, 0, val(8, r));
        ASSERT_TRUE(!strcmp(mha_st_meta_get(out, "layout"), L->layout));
        ASSERT_TRUE(!strcmp(mha_st_meta_get(out, "prefix"), pfx));
        ASSERT_TRUE(!strcmp(mha_st_meta_get(out, "num_heads"), "2"));
        ASSERT_EQ(mha_st_meta_count(out), 3);
        /* Without num_heads in the source, none in the result. */
        ASSERT_OK(ctx, mha_st_meta_set(ctx, st, "num_heads", NULL));
        mha_st_free(out);
        ASSERT_OK(ctx, mha_st_layer(ctx, st, NULL, &out));
        ASSERT_TRUE(mha_st_meta_get(out, "num_heads") == NULL);
        mha_st_free(out);
        mha_st_free(st);
    }
    mha_ctx_free(ctx);
}

/* Biases: those present copied, the others zeros; none at all: no bias tensors. */
TEST(mixed_and_missing_biases) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    for (int k = 1; k < NLAYOUTS - 1; k++) { /* the layouts with a bias per projection */
        const layout_names *L = &LAYOUTS[k];
        for (unsigned mask = 0; mask < 16; mask++) {
            mha_st *st, *out;
            ASSERT_OK(ctx, mha_st_create(ctx, &st));
            ASSERT_OK(ctx, put_layer(ctx, st, "enc.", L, mask));
            ASSERT_OK(ctx, mha_st_layer(ctx, st, NULL, &out));
            if (!mask) {
                ASSERT_EQ(mha_st_count(out), 2);
                ASSERT_TRUE(!mha_st_find(out, "in_proj_bias") &&
                            !mha_st_find(out, "out_proj.bias"));
            } else {
                EXPECT_ARRAY(mha_st_find(out, "in_proj_bias"), 3 * E, 0,
                             mask >> (r / E) & 1 ? val(5 + (int)(r / E), r % E) : 0.0f);
                EXPECT_ARRAY(mha_st_find(out, "out_proj.bias"), E, 0, mask & 8 ? val(8, r) : 0.0f);
            }
            mha_st_free(out);
            mha_st_free(st);
        }
    }
    /* nn.MultiheadAttention: in_proj_bias without out_proj.bias and the reverse. */
    for (unsigned mask = 1; mask < 9; mask += 7) {
        mha_st *st, *out;
        ASSERT_OK(ctx, mha_st_create(ctx, &st));
        ASSERT_OK(ctx, put_layer(ctx, st, "", &LAYOUTS[0], mask));
        ASSERT_OK(ctx, mha_st_layer(ctx, st, NULL, &out));
        EXPECT_ARRAY(mha_st_find(out, "in_proj_bias"), 3 * E, 0, mask & 1 ? val(5, r) : 0.0f);
        EXPECT_ARRAY(mha_st_find(out, "out_proj.bias"), E, 0, mask & 8 ? val(8, r) : 0.0f);
        mha_st_free(out);
        mha_st_free(st);
    }
    mha_ctx_free(ctx);
}

/* kdim/vdim != E: separate q/k/v_proj_weight; separate ones with kdim == vdim == E: packed. */
TEST(kdim_vdim) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    mha_st *st, *out;
    ASSERT_OK(ctx, mha_st_create(ctx, &st));
    ASSERT_OK(ctx, put(ctx, st, "x.", "W_q.weight", 1, E, E));
    ASSERT_OK(ctx, put(ctx, st, "x.", "W_k.weight", 2, E, 3));
    ASSERT_OK(ctx, put(ctx, st, "x.", "W_v.weight", 3, E, 5));
    ASSERT_OK(ctx, put(ctx, st, "x.", "W_o.weight", 4, E, E));
    ASSERT_OK(ctx, put(ctx, st, "x.", "W_k.bias", 6, E, 0));
    ASSERT_OK(ctx, mha_st_layer(ctx, st, "x", &out));
    ASSERT_EQ(mha_st_count(out), 6);
    EXPECT_ARRAY(mha_st_find(out, "q_proj_weight"), E, E, val(1, r * E + c));
    EXPECT_ARRAY(mha_st_find(out, "k_proj_weight"), E, 3, val(2, r * 3 + c));
    EXPECT_ARRAY(mha_st_find(out, "v_proj_weight"), E, 5, val(3, r * 5 + c));
    EXPECT_ARRAY(mha_st_find(out, "in_proj_bias"), 3 * E, 0, r / E == 1 ? val(6, r % E) : 0.0f);
    mha_st_free(out);
    mha_st_free(st);
    ASSERT_OK(ctx, mha_st_create(ctx, &st));
    ASSERT_OK(ctx, put(ctx, st, "", "q_proj_weight", 1, E, E));
    ASSERT_OK(ctx, put(ctx, st, "", "k_proj_weight", 2, E, E));
    ASSERT_OK(ctx, put(ctx, st, "", "v_proj_weight", 3, E, E));
    ASSERT_OK(ctx, put(ctx, st, "", "out_proj.weight", 4, E, E));
    ASSERT_OK(ctx, mha_st_layer(ctx, st, NULL, &out));
    ASSERT_TRUE(mha_st_count(out) == 2 && !strcmp(mha_st_meta_get(out, "prefix"), ""));
    EXPECT_ARRAY(mha_st_find(out, "in_proj_weight"), 3 * E, E,
                 val(1 + (int)(r / E), (r % E) * E + c));
    mha_st_free(out);
    mha_st_free(st);
    mha_ctx_free(ctx);
}

/* A tensor of dtype dt [d0, d1] with the raw element bytes of bits (size of dt each). */
static mha_status put_raw(mha_ctx *ctx, mha_st *st, const char *name, mha_dtype dt, int64_t d0,
                          int64_t d1, const void *bits) {
    int64_t shape[2] = {d0, d1};
    mha_array a;
    mha_status s = mha_array_alloc(ctx, dt, 2, shape, &a);
    if (s) return s;
    memcpy(a.data, bits, (size_t)(d0 * d1) * mha_dtype_size(dt));
    s = mha_st_set(ctx, st, name, &a);
    mha_array_free(&a);
    return s;
}

/* float16 and bfloat16 parameters become exactly their float32 values (normal, subnormal,
 * signed zero, infinities, the largest); float64 ones are rounded as a C cast rounds. */
TEST(dtype_conversion) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    static const uint16_t f16[16] = {0x3C00, 0xC000, 0x7BFF, 0x0001, 0x8000, 0x3555,
                                     0x0400, 0x03FF, 0x7C00, 0xFC00, 0x3800, 0x4248,
                                     0x5640, 0xB400, 0x0200, 0x2E66};
    const float f16_want[16] = {1.0f,     -2.0f,           65504.0f, 0x1p-24f,
                                -0.0f,    0.333251953125f, 0x1p-14f, 1023 * 0x1p-24f,
                                INFINITY, -INFINITY,       0.5f,     3.140625f,
                                100.0f,   -0.25f,          0x1p-15f, 0.0999755859375f};
    static const uint16_t bf16[16] = {0x3F80, 0xC020, 0x4049, 0x0080, 0x0001, 0x7F7F,
                                      0x4F80, 0x8000, 0x7F80, 0x3E20, 0xBF80, 0x0000,
                                      0x3DCD, 0xC2C8, 0x3F00, 0x4110};
    const float bf16_want[16] = {
        1.0f,     -2.5f,    3.140625f, 0x1p-126f, 0x1p-133f,      0x1.fep127f, 0x1p32f, -0.0f,
        INFINITY, 0.15625f, -1.0f,     0.0f,      0.10009765625f, -100.0f,     0.5f,    9.0f};
    double f64[16];
    for (int i = 0; i < 16; i++) f64[i] = 0.1 * (i - 7) + 1e-9;
    mha_st *st, *out;
    ASSERT_OK(ctx, mha_st_create(ctx, &st));
    ASSERT_OK(ctx, put_raw(ctx, st, "a.q_proj.weight", MHA_DTYPE_F16, E, E, f16));
    ASSERT_OK(ctx, put_raw(ctx, st, "a.k_proj.weight", MHA_DTYPE_BF16, E, E, bf16));
    ASSERT_OK(ctx, put_raw(ctx, st, "a.v_proj.weight", MHA_DTYPE_F64, E, E, f64));
    ASSERT_OK(ctx, put_raw(ctx, st, "a.o_proj.weight", MHA_DTYPE_F16, E, E, f16));
    ASSERT_OK(ctx, put_raw(ctx, st, "a.o_proj.bias", MHA_DTYPE_BF16, 1, E, bf16));
    /* a whole model's file: int64 position ids and fp8 tensors beside the layer */
    static const int64_t ids[4] = {0, 1, 2, 3};
    static const uint8_t fp8[4] = {0x38, 0xb8, 0x00, 0x7e};
    ASSERT_OK(ctx, put_raw(ctx, st, "position_ids", MHA_DTYPE_I64, 1, 4, ids));
    ASSERT_OK(ctx, put_raw(ctx, st, "scales", MHA_DTYPE_F8_E4M3, 1, 4, fp8));
    /* the bias is [1, E]: 2-D, refused first */
    ASSERT_EQ(mha_st_layer(ctx, st, NULL, &out), MHA_ERR_SHAPE);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "a.o_proj.bias.ndim: got 2, expected 1");
    int64_t n4[1] = {E};
    mha_array b;
    ASSERT_OK(ctx, mha_array_alloc(ctx, MHA_DTYPE_BF16, 1, n4, &b));
    memcpy(b.data, bf16 + 4, 2 * E);
    ASSERT_OK(ctx, mha_st_set(ctx, st, "a.o_proj.bias", &b));
    mha_array_free(&b);
    ASSERT_OK(ctx, mha_st_layer(ctx, st, NULL, &out));
    EXPECT_ARRAY(mha_st_find(out, "in_proj_weight"), 3 * E, E,
                 r < E       ? f16_want[r * E + c]
                 : r < 2 * E ? bf16_want[(r - E) * E + c]
                             : (float)f64[(r - 2 * E) * E + c]);
    EXPECT_ARRAY(mha_st_find(out, "out_proj.weight"), E, E, f16_want[r * E + c]);
    EXPECT_ARRAY(mha_st_find(out, "out_proj.bias"), E, 0, bf16_want[4 + r]);
    EXPECT_ARRAY(mha_st_find(out, "in_proj_bias"), 3 * E, 0, 0.0f);
    mha_st_free(out);
    /* Any other dtype for a parameter: unsupported, naming the tensor. */
    static const int32_t i32[16] = {0};
    ASSERT_OK(ctx, put_raw(ctx, st, "a.k_proj.weight", MHA_DTYPE_I32, E, E, i32));
    ASSERT_EQ(mha_st_layer(ctx, st, NULL, &out), MHA_ERR_UNSUPPORTED);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx),
                        "mha_st_layer: a.k_proj.weight.dtype: got int32, expected float32, "
                        "bfloat16, float16 or float64");
    ASSERT_TRUE(out == NULL);
    mha_st_free(st);
    mha_ctx_free(ctx);
}

/* A model of 12 encoder layers and a decoder layer of two: the prefix rules. */
static mha_st *model(mha_ctx *ctx) {
    mha_st *st;
    if (mha_st_create(ctx, &st)) return NULL;
    char pfx[64];
    mha_status s = MHA_OK;
    for (int l = 0; l < 12 && !s; l++) {
        snprintf(pfx, sizeof pfx, "encoder.layers.%d.self_attn.", l);
        s = put(ctx, st, pfx, "in_proj_weight", 20 + l, 3 * E, E);
        if (!s) s = put(ctx, st, pfx, "out_proj.weight", 40 + l, E, E);
    }
    const char *dec[2] = {"decoder.layers.0.self_attn.", "decoder.layers.0.multihead_attn."};
    for (int l = 0; l < 2 && !s; l++) {
        s = put(ctx, st, dec[l], "in_proj_weight", 60 + l, 3 * E, E);
        if (!s) s = put(ctx, st, dec[l], "out_proj.weight", 70 + l, E, E);
        if (!s) s = put(ctx, st, dec[l], "in_proj_bias", 80 + l, 3 * E, 0);
    }
    if (!s) s = put(ctx, st, "", "encoder.norm.weight", 90, E, 0);
    if (s) {
        mha_st_free(st);
        return NULL;
    }
    return st;
}

#define EXPECT_PICK(prefix, want_prefix, tag)                                                      \
    do {                                                                                           \
        mha_st *o_ = NULL;                                                                         \
        ASSERT_OK(ctx, mha_st_layer(ctx, st, prefix, &o_));                                        \
        int ok_ = !strcmp(mha_st_meta_get(o_, "prefix"), want_prefix) &&                           \
                  ((const float *)mha_st_find(o_, "in_proj_weight")->data)[1] == val(tag, 1);      \
        mha_st_free(o_);                                                                           \
        const char *p_ = (prefix);                                                                 \
        if (!ok_) FAILF("prefix %s: expected the layer %s", p_ ? p_ : "NULL", want_prefix);        \
    } while (0)

#define EXPECT_FAIL(prefix, status, text)                                                          \
    do {                                                                                           \
        mha_st *o_ = (mha_st *)1;                                                                  \
        mha_status s_ = mha_st_layer(ctx, st, prefix, &o_);                                        \
        if (s_ != (status)) {                                                                      \
            const char *p_ = (prefix);                                                             \
            FAILF("prefix %s: got %s (%s), expected %s", p_ ? p_ : "NULL", mha_status_str(s_),     \
                  mha_ctx_errmsg(ctx), mha_status_str(status));                                    \
            if (!s_) mha_st_free(o_);                                                              \
            return;                                                                                \
        }                                                                                          \
        ASSERT_TRUE(o_ == NULL);                                                                   \
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), text);                                            \
    } while (0)

TEST(prefix_rules) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    mha_st *st = model(ctx);
    ASSERT_TRUE(st != NULL);
    /* No prefix and several layers: the list, in natural order (2 before 10), cut after 7. */
    EXPECT_FAIL(NULL, MHA_ERR_INVALID_ARG,
                "mha_st_layer: prefix: got none, expected one of the 14 attention layers in the "
                "file: decoder.layers.0.multihead_attn., decoder.layers.0.self_attn., "
                "encoder.layers.0.self_attn., encoder.layers.1.self_attn., "
                "encoder.layers.2.self_attn., encoder.layers.3.self_attn., "
                "encoder.layers.4.self_attn. and 7 more (pick one with --prefix / prefix=)");
    EXPECT_FAIL("", MHA_ERR_INVALID_ARG, "prefix: got none");
    EXPECT_PICK("encoder.layers.0.self_attn.", "encoder.layers.0.self_attn.", 20);
    EXPECT_PICK("encoder.layers.10.self_attn", "encoder.layers.10.self_attn.", 30);
    EXPECT_PICK("encoder.layers.1", "encoder.layers.1.self_attn.", 21); /* not 10, 11 */
    EXPECT_PICK("encoder.layers.1.", "encoder.layers.1.self_attn.", 21);
    EXPECT_PICK("encoder.layers.11", "encoder.layers.11.self_attn.", 31);
    EXPECT_PICK("decoder.layers.0.multi", "decoder.layers.0.multihead_attn.", 61);
    EXPECT_FAIL("decoder.layers.0", MHA_ERR_INVALID_ARG,
                "prefix: got \"decoder.layers.0\", expected one of the 2 attention layers that "
                "start with it: decoder.layers.0.multihead_attn., decoder.layers.0.self_attn. "
                "(give the whole prefix)");
    EXPECT_FAIL("encoder", MHA_ERR_INVALID_ARG,
                "expected one of the 12 attention layers that start with it: "
                "encoder.layers.0.self_attn.,");
    EXPECT_FAIL("encoder.layers.12", MHA_ERR_INVALID_ARG,
                "prefix: got \"encoder.layers.12\", expected one of the 14 attention layers in "
                "the file: decoder.layers.0.multihead_attn.,");
    EXPECT_FAIL("self_attn.", MHA_ERR_INVALID_ARG, "expected one of the 14 attention layers");
    /* An incomplete layer says what it lacks when asked for (and is not listed). */
    mha_st *cut;
    ASSERT_OK(ctx, mha_st_create(ctx, &cut));
    for (int i = 0; i < mha_st_count(st); i++)
        if (strcmp(mha_st_name(st, i), "encoder.layers.5.self_attn.out_proj.weight"))
            ASSERT_OK(
                ctx, mha_st_set(ctx, cut, mha_st_name(st, i), mha_st_find(st, mha_st_name(st, i))));
    mha_st_free(st);
    st = cut;
    EXPECT_FAIL("encoder.layers.5", MHA_ERR_NOT_FOUND,
                "mha_st_layer: encoder.layers.5.self_attn.out_proj.weight: missing from the file "
                "(encoder.layers.5.self_attn.in_proj_weight is there: an incomplete "
                "nn.MultiheadAttention layer)");
    EXPECT_FAIL(NULL, MHA_ERR_INVALID_ARG, "one of the 13 attention layers");
    /* ... also when another layer's prefix starts with the same text (not layer 50 instead) */
    ASSERT_OK(ctx, put(ctx, st, "encoder.layers.50.self_attn.", "in_proj_weight", 5, 3 * E, E));
    ASSERT_OK(ctx, put(ctx, st, "encoder.layers.50.self_attn.", "out_proj.weight", 5, E, E));
    EXPECT_FAIL("encoder.layers.5", MHA_ERR_NOT_FOUND,
                "encoder.layers.5.self_attn.out_proj.weight: missing from the file");
    EXPECT_PICK("encoder.layers.50", "encoder.layers.50.self_attn.", 5);
    /* "layers.01." and "layers.1." are two layers, natural order or not */
    ASSERT_OK(ctx, put(ctx, st, "encoder.layers.01.self_attn.", "in_proj_weight", 6, 3 * E, E));
    ASSERT_OK(ctx, put(ctx, st, "encoder.layers.01.self_attn.", "out_proj.weight", 6, E, E));
    EXPECT_PICK("encoder.layers.01", "encoder.layers.01.self_attn.", 6);
    EXPECT_PICK("encoder.layers.1", "encoder.layers.1.self_attn.", 21);
    EXPECT_FAIL(NULL, MHA_ERR_INVALID_ARG, "one of the 15 attention layers");
    /* A layer at the top level wins over nested ones when no prefix is given. */
    ASSERT_OK(ctx, put(ctx, st, "", "in_proj_weight", 3, 3 * E, E));
    ASSERT_OK(ctx, put(ctx, st, "", "out_proj.weight", 4, E, E));
    EXPECT_PICK(NULL, "", 3);
    EXPECT_PICK("encoder.layers.1", "encoder.layers.1.self_attn.", 21);
    mha_st_free(st);
    /* No layer at all; a lone incomplete one. */
    ASSERT_OK(ctx, mha_st_create(ctx, &st));
    ASSERT_OK(ctx, put(ctx, st, "", "lm_head.weight", 1, 7, E));
    EXPECT_FAIL(NULL, MHA_ERR_NOT_FOUND,
                "mha_st_layer: no attention layer found in the file (looked for, under any "
                "prefix: in_proj_weight or q/k/v_proj_weight");
    EXPECT_FAIL("lm_head", MHA_ERR_NOT_FOUND, "no attention layer found");
    ASSERT_OK(ctx, put(ctx, st, "attn.", "q_proj.weight", 1, E, E));
    ASSERT_OK(ctx, put(ctx, st, "attn.", "k_proj.weight", 2, E, E));
    ASSERT_OK(ctx, put(ctx, st, "", "xq_proj.weight", 1, E, E)); /* not a q_proj */
    EXPECT_FAIL(NULL, MHA_ERR_NOT_FOUND,
                "mha_st_layer: attn.v_proj.weight: missing from the file (attn.q_proj.weight is "
                "there: an incomplete huggingface layer)");
    mha_st_free(st);
    /* Arguments. */
    mha_st *o;
    ASSERT_EQ(mha_st_layer(ctx, NULL, NULL, &o), MHA_ERR_INVALID_ARG);
    ASSERT_TRUE(o == NULL);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_st_layer: st: got NULL");
    ASSERT_EQ(mha_st_layer(NULL, o, NULL, NULL), MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_last_errmsg(), "mha_st_layer: out: got NULL");
    mha_ctx_free(ctx);
}

/* Shapes that do not make a layer, each named; add_bias_kv refused. */
TEST(shape_errors) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    static const struct {
        const char *name;
        int64_t d0, d1;
        mha_status want;
        const char *text;
    } cases[] = {
        {"m.k_proj.weight", 2, E, MHA_ERR_UNSUPPORTED,
         "mha_st_layer: m.k_proj.weight.shape[0]: got 2, expected 4 (grouped-query attention: "
         "not supported yet)"},
        {"m.v_proj.weight", 1, E, MHA_ERR_UNSUPPORTED, "grouped-query attention"},
        {"m.k_proj.weight", 3, E, MHA_ERR_SHAPE,
         "m.k_proj.weight.shape[0]: got 3, expected 4 (as many rows as the query projection)"},
        {"m.q_proj.weight", 8, E, MHA_ERR_SHAPE,
         "m.q_proj.weight.shape[0]: got 8, expected 4 (its shape[1]"},
        {"m.q_proj.weight", E, 0, MHA_ERR_SHAPE, "m.q_proj.weight.ndim: got 1, expected 2"},
        {"m.o_proj.weight", E, 5, MHA_ERR_SHAPE,
         "m.o_proj.weight.shape[1]: got 5, expected 4 ([E, E], E from the query projection)"},
        {"m.q_proj.bias", 5, 0, MHA_ERR_SHAPE, "m.q_proj.bias.shape[0]: got 5, expected 4"},
        {"m.k_proj.weight", E, 0, MHA_ERR_SHAPE, "m.k_proj.weight.ndim: got 1, expected 2"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mha_st *st, *out = (mha_st *)1;
        ASSERT_OK(ctx, mha_st_create(ctx, &st));
        ASSERT_OK(ctx, put_layer(ctx, st, "m.", &LAYOUTS[3], 0xf));
        ASSERT_OK(ctx, put(ctx, st, "", cases[i].name, 12, cases[i].d0, cases[i].d1));
        mha_status s = mha_st_layer(ctx, st, NULL, &out);
        if (s != cases[i].want)
            FAILF("%s: got %s (%s)", cases[i].name, mha_status_str(s), mha_ctx_errmsg(ctx));
        ASSERT_EQ(s, cases[i].want);
        ASSERT_TRUE(out == NULL);
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), cases[i].text);
        mha_st_free(st);
    }
    /* Packed layouts: [3E, E], GPT-2's [E, 3E]; a bias of the wrong size. */
    mha_st *st, *out;
    ASSERT_OK(ctx, mha_st_create(ctx, &st));
    ASSERT_OK(ctx, put_layer(ctx, st, "h.0.attn.", &LAYOUTS[NLAYOUTS - 1], 0xf));
    ASSERT_OK(ctx, put(ctx, st, "h.0.attn.", "bias", 1, 1, 1)); /* GPT-2's mask buffer */
    ASSERT_OK(ctx, mha_st_layer(ctx, st, NULL, &out));
    mha_st_free(out);
    ASSERT_OK(ctx, put(ctx, st, "h.0.attn.", "c_attn.weight", 1, E, 11));
    ASSERT_EQ(mha_st_layer(ctx, st, NULL, &out), MHA_ERR_SHAPE);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx),
                        "h.0.attn.c_attn.weight.shape: got [4, 11], expected [E, 3E] (Conv1D's "
                        "[in, out]: q, k, v side by side)");
    ASSERT_OK(ctx, put(ctx, st, "h.0.attn.", "c_attn.weight", 1, E, 3 * E));
    ASSERT_OK(ctx, put(ctx, st, "h.0.attn.", "c_attn.bias", 1, E, 0));
    ASSERT_EQ(mha_st_layer(ctx, st, NULL, &out), MHA_ERR_SHAPE);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx),
                        "h.0.attn.c_attn.bias.shape[0]: got 4, expected 12 (3E: q, k and v "
                        "biases stacked)");
    mha_st_free(st);
    ASSERT_OK(ctx, mha_st_create(ctx, &st));
    ASSERT_OK(ctx, put(ctx, st, "", "in_proj_weight", 1, 3 * E + 1, E));
    ASSERT_OK(ctx, put(ctx, st, "", "out_proj.weight", 1, E, E));
    ASSERT_EQ(mha_st_layer(ctx, st, NULL, &out), MHA_ERR_SHAPE);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "in_proj_weight.shape: got [13, 4], expected [3E, E]");
    ASSERT_OK(ctx, put(ctx, st, "", "in_proj_weight", 1, 3 * E, E));
    ASSERT_OK(ctx, put(ctx, st, "", "bias_v", 1, 1, E));
    ASSERT_EQ(mha_st_layer(ctx, st, NULL, &out), MHA_ERR_UNSUPPORTED);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx),
                        "mha_st_layer: bias_v: found in the file, expected no bias_v (a layer made "
                        "with add_bias_kv=True");
    mha_st_free(st);
    mha_ctx_free(ctx);
}

/* Allocation failures: MHA_ERR_NOMEM each time, nothing returned, nothing leaked. */
TEST(fault_injection) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    mha_st *st = model(ctx), *out;
    ASSERT_TRUE(st != NULL);
    int done = 0;
    for (long k = 0; k < 100 && !done; k++) {
        out = (mha_st *)1;
        mha__fault_after(k);
        mha_status s = mha_st_layer(ctx, st, "decoder.layers.0.self_attn", &out);
        mha__fault_after(-1);
        if (s == MHA_OK) {
            done = mha_st_count(out) == 4;
            mha_st_free(out);
        } else {
            ASSERT_EQ(s, MHA_ERR_NOMEM);
            ASSERT_TRUE(out == NULL);
        }
    }
    ASSERT_TRUE(done);
    mha_st_free(st);
    mha_ctx_free(ctx);
}

/* The module loaders take the same prefix and layouts. */
TEST(module_loaders_with_prefix) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    mha_st *st, *layer;
    ASSERT_OK(ctx, mha_st_create(ctx, &st));
    ASSERT_OK(ctx, put_layer(ctx, st, "model.layers.0.self_attn.", &LAYOUTS[3], 0xf));
    ASSERT_OK(ctx, put_layer(ctx, st, "model.layers.1.self_attn.", &LAYOUTS[3], 0x1));
    ASSERT_OK(ctx, mha_st_layer(ctx, st, "model.layers.1", &layer));
    mha_config cfg;
    ASSERT_OK(ctx, mha_module_config_from_st(ctx, st, "model.layers.1", &cfg));
    ASSERT_TRUE(cfg.embed_dim == E && cfg.kdim == E && cfg.vdim == E && cfg.bias == 1 &&
                cfg.num_heads == 0);
    ASSERT_EQ(mha_module_config_from_st(ctx, st, NULL, &cfg), MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_module_config_from_st: prefix: got none");
    mha_module *m = NULL, *f = NULL, *g = NULL;
    ASSERT_EQ(mha_module_create_from_st(ctx, st, "model.layers.1", 0, &m), MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "does not record it in __metadata__");
    ASSERT_OK(ctx, mha_module_create_from_st(ctx, st, "model.layers.1", 2, &m));
    for (int i = 0; i < mha_st_count(layer); i++) {
        const char *n = mha_st_name(layer, i);
        mha_tensor v;
        ASSERT_OK(ctx, mha_module_param(ctx, m, n, &v, NULL));
        ASSERT_TRUE(!memcmp(v.data, mha_st_find(layer, n)->data,
                            sizeof(float) * (size_t)mha_tensor_numel(&v)));
    }
    char path[64];
    snprintf(path, sizeof path, "layers-%d.safetensors", (int)getpid());
    ASSERT_OK(ctx, mha_st_save(ctx, st, path));
    ASSERT_EQ(mha_module_create_from_file(ctx, path, NULL, 2, &f), MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx),
                        "mha_module_create_from_file: prefix: got none, expected one of the 2 "
                        "attention layers in layers-");
    ASSERT_OK(ctx, mha_module_create_from_file(ctx, path, "model.layers.1.self_attn.", 2, &f));
    cfg = mha_config_default(E, 2);
    ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &g));
    ASSERT_EQ(mha_module_load(ctx, g, path, "model.layers.7"), MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_module_load: prefix: got \"model.layers.7\"");
    /* a file's own errors name the function called, not the loader or saver it calls */
    ASSERT_EQ(mha_module_load(ctx, g, "no-such.safetensors", NULL), MHA_ERR_IO);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_module_load: no-such.safetensors: open: ");
    mha_module *none = NULL;
    ASSERT_EQ(mha_module_create_from_file(ctx, "no-such.safetensors", NULL, 2, &none), MHA_ERR_IO);
    ASSERT_TRUE(none == NULL);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx),
                        "mha_module_create_from_file: no-such.safetensors: open: ");
    ASSERT_EQ(mha_module_save(ctx, g, "/"), MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_module_save: /: got a directory name");
    ASSERT_OK(ctx, mha_module_load(ctx, g, path, "model.layers.1.self_attn"));
    for (int i = 0; i < mha_module_param_count(m); i++) {
        const char *n = mha_module_param_name(m, i);
        mha_tensor a, b, c;
        mha_module_param(ctx, m, n, &a, NULL);
        mha_module_param(ctx, f, n, &b, NULL);
        mha_module_param(ctx, g, n, &c, NULL);
        size_t bytes = sizeof(float) * (size_t)mha_tensor_numel(&a);
        ASSERT_TRUE(!memcmp(a.data, b.data, bytes) && !memcmp(a.data, c.data, bytes));
    }
    unlink(path);
    mha_module_free(m);
    mha_module_free(f);
    mha_module_free(g);
    mha_st_free(layer);
    mha_st_free(st);
    mha_ctx_free(ctx);
}

int main(void) {
    (void)harness_near;
    RUN(every_layout);
    RUN(mixed_and_missing_biases);
    RUN(kdim_vdim);
    RUN(dtype_conversion);
    RUN(prefix_rules);
    RUN(shape_errors);
    RUN(fault_injection);
    RUN(module_loaders_with_prefix);
    return harness_report();
}
