/* ctx.c - contexts, status strings and error messages. */
#include "internal.h"
#include "../kernels/kernels.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static _Thread_local char tls_msg[MHA__MSG_CAP];

const char *mha_status_str(mha_status s) {
    switch (s) {
    case MHA_OK: return "ok";
    case MHA_ERR_INVALID_ARG: return "invalid argument";
    case MHA_ERR_SHAPE: return "shape mismatch";
    case MHA_ERR_NOMEM: return "out of memory";
    case MHA_ERR_IO: return "i/o error";
    case MHA_ERR_FORMAT: return "malformed file";
    case MHA_ERR_NOT_FOUND: return "not found";
    case MHA_ERR_UNSUPPORTED: return "unsupported";
    case MHA_ERR_STATE: return "invalid state";
    }
    return "unknown status";
}

void mha__clear(mha_ctx *ctx) {
    if (ctx) ctx->msg[0] = 0;
    else tls_msg[0] = 0;
}

mha_status mha__err(mha_ctx *ctx, mha_status st, const char *fmt, ...) {
    char *dst = ctx ? ctx->msg : tls_msg;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(dst, MHA__MSG_CAP, fmt, ap);
    va_end(ap);
    return st;
}

const char *mha_ctx_errmsg(const mha_ctx *ctx) { return ctx ? ctx->msg : tls_msg; }
const char *mha_last_errmsg(void) { return tls_msg; }

/* omp_get_max_threads() (all cores, or $OMP_NUM_THREADS), capped at MHA_MAX_THREADS: a
 * huge $OMP_NUM_THREADS must not make libgomp try to start that many threads. */
static int default_threads(void) {
#ifdef _OPENMP
    int n = omp_get_max_threads();
    return n < 1 ? 1 : n > MHA_MAX_THREADS ? MHA_MAX_THREADS : n;
#else
    return 1;
#endif
}

/* The ISA chosen by $MHA_ISA, or the best available. Returns an error for an unknown or
 * unsupported name: forcing a path never falls back silently. */
static mha_status isa_from_env(mha_ctx *ctx, mha_isa *out) {
    const char *e = getenv("MHA_ISA");
    *out = mha__best_isa();
    if (!e || !*e || strcmp(e, "auto") == 0) return MHA_OK;
    mha_isa want;
    if (strcmp(e, "generic") == 0) want = MHA_ISA_GENERIC;
    else if (strcmp(e, "avx2") == 0) want = MHA_ISA_AVX2;
    else if (strcmp(e, "avx512") == 0) want = MHA_ISA_AVX512;
    else
        return mha__err(
            ctx, MHA_ERR_INVALID_ARG,
            "mha_ctx_create: $MHA_ISA: got \"%.40s\", expected generic, avx2, avx512 or auto", e);
    if (!mha_isa_supported(want))
        return mha__err(
            ctx, MHA_ERR_UNSUPPORTED,
            "mha_ctx_create: $MHA_ISA: got %s, expected a path this cpu supports (cpu: %s)", e,
            mha_cpu_features());
    *out = want;
    return MHA_OK;
}

mha_status mha_ctx_create(mha_ctx **out) {
    mha__clear(NULL);
    if (!out)
        return mha__err(NULL, MHA_ERR_INVALID_ARG,
                        "mha_ctx_create: out: got NULL, expected a pointer");
    *out = NULL;
    mha_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx) return mha__err(NULL, MHA_ERR_NOMEM, "mha_ctx_create: out of memory");
    ctx->threads = default_threads();
    mha_isa isa;
    mha_status st = isa_from_env(ctx, &isa);
    ctx->isa = isa;
    ctx->kern = mha__kernels_for(isa);
    *out = ctx;
    if (st != MHA_OK) snprintf(tls_msg, sizeof tls_msg, "%s", ctx->msg);
    return st;
}

void mha_ctx_free(mha_ctx *ctx) { free(ctx); }

mha_status mha_ctx_set_threads(mha_ctx *ctx, int n) {
    if (!ctx)
        return mha__err(NULL, MHA_ERR_INVALID_ARG,
                        "mha_ctx_set_threads: ctx: got NULL, expected a context");
    mha__clear(ctx);
    if (n < 0 || n > MHA_MAX_THREADS)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "mha_ctx_set_threads: n: got %d, expected 1 to %d (MHA_MAX_THREADS), or 0 "
                        "for all cores",
                        n, MHA_MAX_THREADS);
    ctx->threads = n == 0 ? default_threads() : n;
    return MHA_OK;
}

int mha_ctx_threads(const mha_ctx *ctx) { return mha__ctx_threads(ctx); }

mha_status mha_ctx_set_isa(mha_ctx *ctx, mha_isa isa) {
    if (!ctx)
        return mha__err(NULL, MHA_ERR_INVALID_ARG,
                        "mha_ctx_set_isa: ctx: got NULL, expected a context");
    mha__clear(ctx);
    if (isa == MHA_ISA_AUTO) isa = mha__best_isa();
    if (isa != MHA_ISA_GENERIC && isa != MHA_ISA_AVX2 && isa != MHA_ISA_AVX512)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "mha_ctx_set_isa: isa: got %d, expected an mha_isa value", (int)isa);
    if (!mha_isa_supported(isa))
        return mha__err(ctx, MHA_ERR_UNSUPPORTED,
                        "mha_ctx_set_isa: isa: got %s, expected a path this cpu supports (cpu: %s)",
                        mha_isa_name(isa), mha_cpu_features());
    ctx->isa = isa;
    ctx->kern = mha__kernels_for(isa);
    return MHA_OK;
}

mha_isa mha_ctx_isa(const mha_ctx *ctx) { return ctx ? ctx->isa : mha__best_isa(); }

const char *mha_isa_name(mha_isa isa) {
    switch (isa) {
    case MHA_ISA_AUTO: return "auto";
    case MHA_ISA_GENERIC: return "generic";
    case MHA_ISA_AVX2: return "avx2";
    case MHA_ISA_AVX512: return "avx512";
    }
    return "unknown";
}

const struct mha_kernels *mha__ctx_kernels(const mha_ctx *ctx) {
    return ctx ? ctx->kern : mha__kernels_for(mha__best_isa());
}

int mha__ctx_threads(const mha_ctx *ctx) { return ctx ? ctx->threads : default_threads(); }
