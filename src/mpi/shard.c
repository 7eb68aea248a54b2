/* shard.c - which tokens each rank holds (include/mha_mpi.h, LAYOUTS). */
#include "mpi/mpi_internal.h"

mha_mpi_layout mha_mpi_layout_for(const mha_mask *mask) {
    return mask && mask->causal != MHA_CAUSAL_NONE ? MHA_MPI_ZIGZAG : MHA_MPI_CONTIGUOUS;
}

mha_status mha_mpi_shard(mha_ctx *ctx, mha_mpi_layout layout, int64_t n, int rank, int nranks,
                         int64_t start[2], int64_t len[2]) {
    static const char *const fn = "mha_mpi_shard";
    mha__clear(ctx);
    if (!start || !len)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: %s: got NULL, expected an int64_t[2]", fn,
                        !start ? "start" : "len");
    if (layout != MHA_MPI_CONTIGUOUS && layout != MHA_MPI_ZIGZAG)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: layout: got %d, expected MHA_MPI_CONTIGUOUS or MHA_MPI_ZIGZAG", fn,
                        (int)layout);
    if (nranks < 1)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: nranks: got %d, expected >= 1", fn, nranks);
    if (rank < 0 || rank >= nranks)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: rank: got %d, expected a value in [0, %d]",
                        fn, rank, nranks - 1);
    if (n < 0)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: n: got %lld, expected >= 0", fn,
                        (long long)n);
    const int zz = layout == MHA_MPI_ZIGZAG;
    const int64_t parts = (zz ? 2 : 1) * (int64_t)nranks;
    if (n % parts != 0) {
        if (zz)
            return mha__err(ctx, MHA_ERR_SHAPE,
                            "%s: n: got %lld, expected a multiple of %lld (2 x %d ranks, zigzag)",
                            fn, (long long)n, (long long)parts, nranks);
        return mha__err(ctx, MHA_ERR_SHAPE,
                        "%s: n: got %lld, expected a multiple of %d (%d ranks, contiguous)", fn,
                        (long long)n, nranks, nranks);
    }
    const int64_t c = n / parts;
    start[0] = rank * c, len[0] = c;
    start[1] = zz ? (parts - 1 - rank) * c : 0, len[1] = zz ? c : 0;
    return MHA_OK;
}
