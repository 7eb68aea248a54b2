/* io_internal.h - what the .npy and safetensors code shares: array sizes, whole-file reads,
 * staged outputs. Never installed. */
#ifndef MHA_IO_INTERNAL_H
#define MHA_IO_INTERNAL_H

#include "core/internal.h"

/* Room for "mha_xxx_load: <path>" as a message prefix (long paths are cut). */
#define MHA__WHO_CAP 256

/* Fills who with "fn: path" (or just "fn" when path is NULL). */
void mha__io_who(char *who, const char *fn, const char *path);

/* What the formats call a dtype: its size, PyTorch's name ("bfloat16"), safetensors' ("BF16")
 * and NumPy's type code without the byte order ("f2"; NULL when NumPy has none). */
typedef struct {
    mha_dtype dt;
    size_t size;
    const char *name, *st, *npy;
} mha__dtype_info;

/* The i-th dtype (i = its mha_dtype value), or NULL when i is not one: iterate from 0 until
 * NULL to visit them all. */
const mha__dtype_info *mha__dtype_at(int i);

/* 1 if dt is one of the mha_dtype values. */
int mha__dtype_valid(mha_dtype dt);

/* Checks ndim and shape (0 <= ndim <= MHA_MAX_DIMS, every dim >= 0) and computes the number of
 * elements and bytes without overflow. Returns 1 on success; 0 when a dim is negative
 * (*bad_dim set) or the size overflows (*bad_dim = -1). */
int mha__shape_bytes(mha_dtype dt, int ndim, const int64_t *shape, int64_t *numel, size_t *bytes,
                     int *bad_dim);

/* Formats "[2, 3]" into buf (cap bytes). */
void mha__shape_str(char *buf, size_t cap, int ndim, const int64_t *shape);

/* Allocates out->data (bytes, zeroed) and fills out's fields; out is zeroed on failure. */
mha_status mha__array_make(mha_ctx *ctx, const char *who, mha_dtype dt, int ndim,
                           const int64_t *shape, mha_array *out);

/* Validates a caller's array for writing: dtype, ndim, shape, data != NULL. */
mha_status mha__array_check(mha_ctx *ctx, const char *who, const char *name, const mha_array *a,
                            size_t *bytes);

/* Adds (or replaces) name in st with *a itself, not a copy: st owns its data from then on and
 * *a is zeroed, also on failure (MHA_ERR_NOMEM; the data is freed then). a must be valid (as
 * mha__array_make makes it) and name not "__metadata__". */
mha_status mha__st_adopt(mha_ctx *ctx, const char *who, mha_st *st, const char *name, mha_array *a);

/* The sizes of the layer mha__st_layer returns (nn.MultiheadAttention's kdim, vdim, bias). */
typedef struct {
    int64_t embed_dim, kdim, vdim;
    int bias;
} mha__layer_dims;

/* mha_st_layer (src/io/layers.c) for the module loaders: messages start with fn and name the
 * file where (NULL: "the file"); dims (may be NULL) receives the layer's sizes. */
mha_status mha__st_layer(mha_ctx *ctx, const char *fn, const mha_st *st, const char *prefix,
                         const char *where, mha_st **out, mha__layer_dims *dims);

/* Calls fn with the array's bytes; bools are written as 0/1 whatever the stored byte. */
mha_status mha__emit_data(mha_ctx *ctx, const char *who, mha_dtype dt, const void *data,
                          size_t bytes, mha_write_fn fn, void *user);
/* Calls fn once, turning a nonzero return into MHA_ERR_IO. */
mha_status mha__emit(mha_ctx *ctx, const char *who, mha_write_fn fn, void *user, const void *data,
                     size_t size);

/* Checks the first n bytes of a file of size bytes before the whole file is read. Called first
 * with n = min(head_len, size): the magic and the header's size; setting *want (> n, at most
 * size) asks for a second call with the first *want bytes, the whole header, to check it and
 * the data size it implies. */
typedef mha_status (*mha__head_fn)(mha_ctx *ctx, const char *who, const unsigned char *head,
                                   size_t n, uint64_t size, size_t *want);
#define MHA__HEAD_CAP 64

/* Reads a whole regular file into a buffer from mha__malloc (free with mha__free), after
 * check (may be NULL) has accepted its first head_len bytes (at most MHA__HEAD_CAP) and then
 * the bytes it wants: a file whose header is wrong costs its header, not its size. */
mha_status mha__read_file(mha_ctx *ctx, const char *who, const char *path, size_t head_len,
                          mha__head_fn check, unsigned char **buf, size_t *len);

/* Writes obj through fn/user; errors start with who. */
typedef mha_status (*mha__emit_fn)(mha_ctx *ctx, const char *who, const void *obj, mha_write_fn fn,
                                   void *user);

/* One output through the mha_outputs mechanism (declare, write, commit): the savers
 * mha_npy_save, mha_st_save and mha_module_save. On any failure an
 * earlier file at path is untouched and no temporary is left. */
mha_status mha__save_atomic(mha_ctx *ctx, const char *who, const char *path, mha__emit_fn emit,
                            const void *obj);

/* mha_st_load and mha_st_save for the public function fn (its name starts their messages: a
 * module's load names mha_module_load, not the loader it calls); path and out checked by the
 * caller. */
mha_status mha__st_load_as(mha_ctx *ctx, const char *fn, const char *path, mha_st **out);
mha_status mha__st_save_as(mha_ctx *ctx, const char *fn, const mha_st *st, const char *path);

/* Test hooks, process-wide, for single-threaded tests only:
 * mha__io_fail_write_after(n, err): the output writer fails with errno err once n more bytes
 * have been written (n < 0 disables); mha__io_fail_rename_at(k, err): the k-th rename of the
 * commits from now (0-based) fails with errno err (k < 0 disables). */
void mha__io_fail_write_after(long long n, int err);
void mha__io_fail_rename_at(int k, int err);

#endif
