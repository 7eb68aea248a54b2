/* fuzz_io.c - libFuzzer harness for the .npy and safetensors parsers, the file loaders and
 * loading checkpoints into modules.
 *
 * Build (clang): cmake -S . -B build-fuzz -DMHA_FUZZ=ON -DCMAKE_C_COMPILER=clang
 *                cmake --build build-fuzz --target fuzz_io
 * Run:           UBSAN_OPTIONS=halt_on_error=1 build-fuzz/fuzz_io -max_total_time=60 [corpus_dir]
 *                (UBSan only prints and goes on without halt_on_error; -max_len=8192 lets
 *                checkpoints of a few layers' size through)
 *
 * The first byte picks the target (its value modulo 4); the rest is the file.
 *   0: .npy, 1: safetensors: a file that parses must write back and parse again to the same
 *      arrays (a round-trip property). A safetensors file then goes through mha_st_layer,
 *      without a prefix and with the prefix of its first tensor's name: a layer it returns must
 *      be nn.MultiheadAttention's float32 layout with shapes that fit together.
 *   2: a safetensors checkpoint loaded into modules (mha_module_load into float32 and bf16
 *      modules of the file's configuration and of a fixed one, mha_module_create_from_st): a
 *      failed load leaves the module unchanged, a successful one holds the layer's values
 *      (rounded once in bf16) and runs a small forward.
 *   3: the file loaders (mha_npy_load, mha_st_load, mha_module_create_from_file) on the bytes
 *      written to a file: they must agree with the parsers on the same bytes. */
#include "mha.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../io_test_util.h"

static int same_array(const mha_array *a, const mha_array *b) {
    if (a->dtype != b->dtype || a->ndim != b->ndim) return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return 0;
    size_t bytes = (size_t)mha_array_numel(a) * mha_dtype_size(a->dtype);
    return bytes == 0 || memcmp(a->data, b->data, bytes) == 0;
}

/* The layer mha_st_layer picks (if any) is float32 in nn.MultiheadAttention's layout. */
static void check_layer(const mha_st *s, const char *prefix) {
    mha_st *l;
    if (mha_st_layer(NULL, s, prefix, &l) != MHA_OK) return;
    const mha_array *wo = mha_st_find(l, "out_proj.weight");
    if (!wo || wo->dtype != MHA_DTYPE_F32 || wo->ndim != 2 || wo->shape[0] != wo->shape[1]) abort();
    const int64_t E = wo->shape[0];
    const mha_array *w = mha_st_find(l, "in_proj_weight");
    if (w &&
        (w->dtype != MHA_DTYPE_F32 || w->ndim != 2 || w->shape[0] != 3 * E || w->shape[1] != E))
        abort();
    if (!w && (!mha_st_find(l, "q_proj_weight") || !mha_st_find(l, "k_proj_weight") ||
               !mha_st_find(l, "v_proj_weight")))
        abort();
    const mha_array *b = mha_st_find(l, "in_proj_bias"), *ob = mha_st_find(l, "out_proj.bias");
    if (!b != !ob || (b && (b->ndim != 1 || b->shape[0] != 3 * E || ob->shape[0] != E))) abort();
    mha_st_free(l);
}

/* 1 if the bfloat16 bits b are f (a float32) rounded to nearest even; any NaN for a NaN. */
static int is_bf16_of(uint16_t b, float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if (isnan(f)) return (b & 0x7fff) > 0x7f80;
    return b == (uint16_t)((u + 0x7fffu + (u >> 16 & 1)) >> 16);
}

/* 1 if the module's parameters are the same bits as those in st (a state_dict). */
static int same_params(const mha_module *m, const mha_st *st) {
    mha_st *now;
    if (mha_module_state_dict(NULL, m, &now) != MHA_OK) abort();
    int same = mha_st_count(now) == mha_st_count(st);
    for (int i = 0; same && i < mha_st_count(now); i++) {
        const mha_array *b = mha_st_find(st, mha_st_name(now, i));
        same = b && same_array(mha_st_find(now, mha_st_name(now, i)), b);
    }
    mha_st_free(now);
    return same;
}

/* The module's parameters hold the layer's float32 values (rounded to bf16 in a bf16 module). */
static void check_loaded(const mha_module *m, const mha_st *layer) {
    mha_st *now;
    if (mha_module_state_dict(NULL, m, &now) != MHA_OK) abort();
    const mha_dtype dt = mha_module_config(m)->dtype;
    for (int i = 0; i < mha_st_count(now); i++) {
        const mha_array *p = mha_st_find(now, mha_st_name(now, i));
        const mha_array *a = mha_st_find(layer, mha_st_name(now, i));
        if (!a || a->dtype != MHA_DTYPE_F32 || p->dtype != dt || p->ndim != a->ndim) abort();
        const int64_t n = mha_array_numel(p);
        if (n != mha_array_numel(a)) abort();
        const float *f = a->data;
        for (int64_t e = 0; e < n; e++) {
            if (dt == MHA_DTYPE_F32 && memcmp(&f[e], (const float *)p->data + e, 4) != 0) abort();
            if (dt == MHA_DTYPE_BF16 && !is_bf16_of(((const uint16_t *)p->data)[e], f[e])) abort();
        }
    }
    mha_st_free(now);
}

/* A forward of 2 positions through m (float32 or bf16), self- or cross-attention. */
static void small_forward(mha_ctx *ctx, mha_module *m) {
    const mha_config *c = mha_module_config(m);
    const int64_t E = c->embed_dim, kd = c->kdim ? c->kdim : E, vd = c->vdim ? c->vdim : E;
    if (E > 64 || kd > 64 || vd > 64) return;
    static uint16_t buf[4][2 * 64];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 2 * 64; j++) buf[i][j] = c->dtype == MHA_DTYPE_F32 ? 0 : 0x3f80;
    float fb[4][2 * 64];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 2 * 64; j++) fb[i][j] = (float)((i + j) % 7) * 0.25f - 0.5f;
    void *p[4];
    for (int i = 0; i < 4; i++) p[i] = c->dtype == MHA_DTYPE_F32 ? (void *)fb[i] : (void *)buf[i];
    const int64_t sq[2] = {2, E}, sk[2] = {2, kd}, sv[2] = {2, vd};
    mha_tensor q = mha_tensor_typed(p[0], c->dtype, 2, sq, NULL);
    mha_tensor k = mha_tensor_typed(p[1], c->dtype, 2, sk, NULL);
    mha_tensor v = mha_tensor_typed(p[2], c->dtype, 2, sv, NULL);
    mha_tensor y = mha_tensor_typed(p[3], c->dtype, 2, sq, NULL);
    mha_forward_opts fo = mha_forward_opts_default();
    fo.save_for_backward = 0;
    const int self = kd == E && vd == E;
    if (mha_module_forward(ctx, m, &fo, &q, self ? NULL : &k, self ? NULL : &v, NULL, &y, NULL) !=
        MHA_OK)
        abort();
}

/* Loads path into a new module of cfg: unchanged on failure, the layer's values on success. */
static void load_into(mha_ctx *ctx, const mha_config *cfg, const char *path, const mha_st *layer) {
    mha_module *m;
    if (mha_module_create(ctx, cfg, &m) != MHA_OK) return;
    mha_st *before;
    if (mha_module_state_dict(NULL, m, &before) != MHA_OK) abort();
    if (mha_module_load(ctx, m, path, NULL) != MHA_OK) {
        if (!same_params(m, before)) abort();
    } else {
        if (!layer) abort(); /* loaded, yet mha_st_layer refused the file */
        check_loaded(m, layer);
        small_forward(ctx, m);
    }
    mha_st_free(before);
    mha_module_free(m);
}

static char scratch_path[64];

static void scratch_remove(void) { unlink(scratch_path); }

/* A per-process scratch file holding data (removed at exit). */
static const char *scratch(const uint8_t *data, size_t size) {
    char *path = scratch_path;
    if (!path[0]) {
        snprintf(path, sizeof scratch_path, "/tmp/fuzz_io.%ld", (long)getpid());
        atexit(scratch_remove);
    }
    FILE *f = fopen(path, "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size) || fclose(f) != 0) abort();
    return path;
}

static void fuzz_module(const uint8_t *data, size_t size) {
    mha_ctx *ctx;
    if (mha_ctx_create(&ctx) != MHA_OK || mha_ctx_set_threads(ctx, 1) != MHA_OK) abort();
    mha_st *s = NULL, *layer = NULL;
    if (mha_st_parse(NULL, data, size, &s) == MHA_OK) {
        if (mha_st_layer(NULL, s, NULL, &layer) != MHA_OK) layer = NULL;
        const char *path = scratch(data, size);
        mha_config cfg;
        if (mha_module_config_from_st(NULL, s, NULL, &cfg) == MHA_OK) {
            if (!layer) abort();
            if (cfg.num_heads == 0) cfg.num_heads = 1;
            load_into(ctx, &cfg, path, layer);
            cfg.dtype = MHA_DTYPE_BF16;
            load_into(ctx, &cfg, path, layer);
        }
        mha_config fixed = mha_config_default(4, 2);
        load_into(ctx, &fixed, path, layer);
        fixed.dtype = MHA_DTYPE_BF16;
        load_into(ctx, &fixed, path, layer);
        for (int h = 0; h < 2; h++) {
            mha_module *m;
            if (mha_module_create_from_st(ctx, s, NULL, h, &m) != MHA_OK) continue;
            if (!layer) abort();
            check_loaded(m, layer);
            small_forward(ctx, m);
            mha_module *b;
            if (mha_module_copy(ctx, m, MHA_DTYPE_BF16, &b) == MHA_OK) {
                check_loaded(b, layer);
                small_forward(ctx, b);
                mha_module_free(b);
            }
            mha_module_free(m);
        }
    }
    mha_st_free(layer);
    mha_st_free(s);
    mha_ctx_free(ctx);
}

/* The loaders read the file as the parsers read its bytes. */
static void fuzz_loaders(const uint8_t *data, size_t size) {
    const char *path = scratch(data, size);
    mha_array a, b;
    const mha_status pa = mha_npy_parse(NULL, data, size, &a), la = mha_npy_load(NULL, path, &b);
    if (pa != la || (pa == MHA_OK && !same_array(&a, &b))) abort();
    mha_array_free(&a);
    mha_array_free(&b);
    mha_st *s, *t;
    const mha_status ps = mha_st_parse(NULL, data, size, &s), ls = mha_st_load(NULL, path, &t);
    if (ps != ls) abort();
    for (int i = 0; ps == MHA_OK && i < mha_st_count(s); i++) {
        const mha_array *x = mha_st_find(t, mha_st_name(s, i));
        if (!x || !same_array(mha_st_find(s, mha_st_name(s, i)), x)) abort();
    }
    mha_module *m = NULL, *n = NULL;
    const mha_status pm = ps == MHA_OK ? mha_module_create_from_st(NULL, s, NULL, 1, &m) : ps;
    const mha_status lm = mha_module_create_from_file(NULL, path, NULL, 1, &n);
    if (pm != lm || (m && !n)) abort();
    mha_module_free(m);
    mha_module_free(n);
    mha_st_free(s);
    mha_st_free(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int which = data[0] % 4;
    data++;
    size--;
    if (which == 2) {
        fuzz_module(data, size);
        return 0;
    }
    if (which == 3) {
        fuzz_loaders(data, size);
        return 0;
    }
    membuf m = membuf_new();
    if (which == 0) {
        mha_array a, b;
        if (mha_npy_parse(NULL, data, size, &a) != MHA_OK) return 0;
        if (mha_npy_write(NULL, &a, mem_write, &m) != MHA_OK) abort();
        if (mha_npy_parse(NULL, m.p, m.n, &b) != MHA_OK || !same_array(&a, &b)) abort();
        mha_array_free(&a);
        mha_array_free(&b);
    } else {
        mha_st *s, *t;
        if (mha_st_parse(NULL, data, size, &s) != MHA_OK) return 0;
        if (mha_st_write(NULL, s, mem_write, &m) != MHA_OK) abort();
        if (mha_st_parse(NULL, m.p, m.n, &t) != MHA_OK) abort();
        if (mha_st_count(s) != mha_st_count(t)) abort();
        for (int i = 0; i < mha_st_count(s); i++) {
            const char *name = mha_st_name(s, i);
            const mha_array *x = mha_st_find(t, name);
            if (!x || !same_array(mha_st_find(s, name), x)) abort();
        }
        if (mha_st_meta_count(s) != mha_st_meta_count(t)) abort();
        for (int i = 0; i < mha_st_meta_count(s); i++) {
            const char *key = mha_st_meta_key(s, i), *v = mha_st_meta_get(t, key);
            if (!v || strcmp(v, mha_st_meta_get(s, key)) != 0) abort();
        }
        check_layer(s, NULL);
        if (mha_st_count(s) > 0) {
            char pre[256];
            const char *name = mha_st_name(s, 0), *dot = strrchr(name, '.');
            size_t n = dot ? (size_t)(dot - name) + 1 : 0;
            if (n < sizeof pre) {
                memcpy(pre, name, n);
                pre[n] = 0;
                check_layer(s, pre);
            }
        }
        mha_st_free(s);
        mha_st_free(t);
    }
    free(m.p);
    return 0;
}
