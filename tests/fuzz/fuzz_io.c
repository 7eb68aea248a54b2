/* fuzz_io.c - libFuzzer harness for the .npy and safetensors parsers.
 *
 * Build (clang): cmake -S . -B build-fuzz -DMHA_FUZZ=ON -DCMAKE_C_COMPILER=clang
 *                cmake --build build-fuzz --target fuzz_io
 * Run:           build-fuzz/fuzz_io -max_total_time=60 [corpus_dir]
 *
 * The first byte picks the parser (even: .npy, odd: safetensors); the rest is the file. A file
 * that parses must write back and parse again to the same arrays (a round-trip property). A
 * safetensors file then goes through mha_st_layer, without a prefix and with the prefix of its
 * first tensor's name: a layer it returns must be nn.MultiheadAttention's float32 layout with
 * shapes that fit together. */
#include "mha.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int which = data[0] & 1;
    data++;
    size--;
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
