/* Ping-pong between ranks 0 and 1: one-way latency of 8-byte messages and bandwidth of
 * 1 MiB messages.  Prints one line per repetition from rank 0:
 *     lat8 <microseconds one-way>
 *     bw1m <MiB/s>
 * The caller takes medians (repetitions are short so that noise shows as outliers, not bias).
 *
 * usage: pingpong [repetitions]
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

static double pingpong(char *buf, int size, int iters, int rank) {
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    for (int i = 0; i < iters; i++) {
        if (rank == 0) {
            MPI_Send(buf, size, MPI_CHAR, 1, 1, MPI_COMM_WORLD);
            MPI_Recv(buf, size, MPI_CHAR, 1, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        } else if (rank == 1) {
            MPI_Recv(buf, size, MPI_CHAR, 0, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            MPI_Send(buf, size, MPI_CHAR, 0, 1, MPI_COMM_WORLD);
        }
    }
    return MPI_Wtime() - t0;
}

int main(int argc, char **argv) {
    int rank, reps = argc > 1 ? atoi(argv[1]) : 10;
    const int big = 1 << 20, lat_iters = 2000, bw_iters = 50;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    char *buf = calloc(1, big);
    pingpong(buf, 8, 200, rank);            /* warm-up: connections, registration caches */
    pingpong(buf, big, 5, rank);
    for (int r = 0; r < reps; r++) {
        double t = pingpong(buf, 8, lat_iters, rank);
        if (rank == 0) printf("lat8 %.3f\n", t / (2.0 * lat_iters) * 1e6);
        t = pingpong(buf, big, bw_iters, rank);
        if (rank == 0) printf("bw1m %.1f\n", 2.0 * bw_iters * (big / 1048576.0) / t);
    }
    fflush(stdout);
    free(buf);
    MPI_Finalize();
    return 0;
}
