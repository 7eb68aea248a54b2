/* mpi_pingpong.c - the transport between two ranks, for the ring attention's scaling model
 * (bench/mpi.sh, BENCHMARKS.md "Issue 12"): rank 0 sends a message of n bytes to rank 1, which
 * sends it back; half the median round trip is the one-way time. Prints one JSON line per size:
 * {"bytes":n,"one_way_us":t,"gbps":n/t}. The latency is the one-way time of the smallest size,
 * the bandwidth the rate of the largest.
 *
 *   mpicc -O2 bench/mpi_pingpong.c -o pingpong && mpirun -n 2 ./pingpong [max_mib] [runs]
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    const long max_mib = argc > 1 ? atol(argv[1]) : 64;
    const int runs = argc > 2 ? atoi(argv[2]) : 20;
    const size_t max_bytes = (size_t)(max_mib > 0 ? max_mib : 1) << 20;
    char *buf = malloc(max_bytes);
    double *t = malloc(sizeof(double) * (size_t)(runs > 0 ? runs : 1));
    if (size != 2 || !buf || !t || runs < 1) {
        if (rank == 0) fprintf(stderr, "mpi_pingpong: needs 2 ranks, [max_mib] [runs >= 1]\n");
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    memset(buf, 1, max_bytes);
    for (size_t n = 8; n <= max_bytes; n *= 8) {
        for (int r = -2; r < runs; r++) { /* two warm-up round trips */
            MPI_Barrier(MPI_COMM_WORLD);
            double t0 = MPI_Wtime();
            if (rank == 0) {
                MPI_Send(buf, (int)n, MPI_BYTE, 1, 0, MPI_COMM_WORLD);
                MPI_Recv(buf, (int)n, MPI_BYTE, 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            } else {
                MPI_Recv(buf, (int)n, MPI_BYTE, 0, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                MPI_Send(buf, (int)n, MPI_BYTE, 0, 0, MPI_COMM_WORLD);
            }
            if (r >= 0) t[r] = (MPI_Wtime() - t0) / 2;
        }
        qsort(t, (size_t)runs, sizeof(double), cmp_double);
        const double one_way = t[runs / 2];
        if (rank == 0)
            printf("{\"bytes\":%zu,\"one_way_us\":%.3f,\"gbps\":%.4f}\n", n, one_way * 1e6,
                   (double)n / one_way * 1e-9);
    }
    free(buf);
    free(t);
    MPI_Finalize();
    return 0;
}
