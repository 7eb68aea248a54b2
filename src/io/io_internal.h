/* io_internal.h - what the .npy and safetensors code shares: array sizes, whole-file reads,
 * atomic saves. Never installed. */
#ifndef MHA_IO_INTERNAL_H
#define MHA_IO_INTERNAL_H

#include "core/internal.h"

/* Room for "mha_xxx_load: <path>" as a message prefix (long paths are cut). */
#define MHA__WHO_CAP 256

/* Fills who with "fn: path" (or just "fn" when path is NULL). */
void mha__io_who(char *who, const char *fn, const char *path);

/* 1 if dt is one of the mha_dtype values. */
int mha__dtype_valid(mha_dtype dt);

/* Checks ndim and shape (0 <= ndim <= MHA_MAX_DIMS, every dim >= 0) and computes the number of
 * elements and bytes without overflow. Returns 1 on success; 0 when a dim is negative
 * (*bad_dim set) or the size overflows (*bad_dim = -1). */
int mha__shape_bytes(mha_dtype dt, int ndim, const int64_t *shape, int64_t *numel,
                     size_t *bytes, int *bad_dim);

/* Formats "[2, 3]" into buf (cap bytes). */
void mha__shape_str(char *buf, size_t cap, int ndim, const int64_t *shape);

/* Allocates out->data (bytes, zeroed) and fills out's fields; out is zeroed on failure. */
mha_status mha__array_make(mha_ctx *ctx, const char *who, mha_dtype dt, int ndim,
                           const int64_t *shape, mha_array *out);

/* Validates a caller's array for writing: dtype, ndim, shape, data != NULL. */
mha_status mha__array_check(mha_ctx *ctx, const char *who, const char *name,
                            const mha_array *a, size_t *bytes);

/* Calls fn with the array's bytes; bools are written as 0/1 whatever the stored byte. */
mha_status mha__emit_data(mha_ctx *ctx, const char *who, mha_dtype dt, const void *data,
                          size_t bytes, mha_write_fn fn, void *user);
/* Calls fn once, turning a nonzero return into MHA_ERR_IO. */
mha_status mha__emit(mha_ctx *ctx, const char *who, mha_write_fn fn, void *user,
                     const void *data, size_t size);

/* Reads a whole regular file into a buffer from mha__malloc (free with mha__free). */
mha_status mha__read_file(mha_ctx *ctx, const char *who, const char *path, unsigned char **buf,
                          size_t *len);

/* Writes obj through emit into "<path>.tmp-XXXXXX" in the same directory, fsyncs and renames
 * over path. On any failure the temporary is removed and an earlier file at path is untouched.
 * emit's errors keep their message, except that a failing write names path and strerror. */
typedef mha_status (*mha__emit_fn)(mha_ctx *ctx, const char *who, const void *obj,
                                   mha_write_fn fn, void *user);
mha_status mha__save_atomic(mha_ctx *ctx, const char *who, const char *path, mha__emit_fn emit,
                            const void *obj);

/* Test hook: the atomic file writer fails with EIO once n more bytes have been written
 * (n < 0 disables). Process-wide, for single-threaded tests only. */
void mha__io_fail_write_after(long long n);

#endif
