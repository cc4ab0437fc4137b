/* Checks run inside containers by tests/mpi: each prints one line per rank (or from rank 0)
 * that the tests compare with what MPI semantics require.
 *
 *   mpitest allreduce   sum of (rank + 1) over all ranks: n(n+1)/2
 *   mpitest ring        a token passed once round the ring, each rank adds its rank
 *   mpitest maps        which MPI library file this rank has mapped (/proc/self/maps)
 *   mpitest shm         ranks of one node share a window (MPI_Win_allocate_shared): each
 *                       writes its rank into its slot, then reads all slots directly
 *   mpitest version     MPI_Get_library_version, first line
 *   mpitest pingpong [REPS]  ranks 0 and 1 (bench/mpi): per repetition rank 0 prints
 *                       "lat8 US" (one-way latency of 8-byte messages, microseconds) and
 *                       "bw1m MIBS" (bandwidth of 1 MiB messages, MiB/s); other ranks wait
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int allreduce(int rank, int size) {
    int mine = rank + 1, sum = 0;
    MPI_Allreduce(&mine, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0)
        printf("allreduce size=%d sum=%d\n", size, sum);
    return sum == size * (size + 1) / 2 ? 0 : 1;
}

static int ring(int rank, int size) {
    int token = 0;
    if (size < 2) return 1;
    if (rank == 0) {
        MPI_Send(&token, 1, MPI_INT, 1, 7, MPI_COMM_WORLD);
        MPI_Recv(&token, 1, MPI_INT, size - 1, 7, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        printf("ring size=%d token=%d\n", size, token);
    } else {
        MPI_Recv(&token, 1, MPI_INT, rank - 1, 7, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        token += rank;
        MPI_Send(&token, 1, MPI_INT, (rank + 1) % size, 7, MPI_COMM_WORLD);
    }
    return 0;
}

#define BIGRING_INTS (1 << 18)       /* 1 MiB */

static int bigring(int rank, int size) {
    int *buf = malloc(BIGRING_INTS * sizeof(int)), ok = 1, i;
    if (!buf || size < 2) return 1;
    if (rank == 0) {
        for (i = 0; i < BIGRING_INTS; i++) buf[i] = i;
        MPI_Send(buf, BIGRING_INTS, MPI_INT, 1, 8, MPI_COMM_WORLD);
        MPI_Recv(buf, BIGRING_INTS, MPI_INT, size - 1, 8, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        for (i = 0; i < BIGRING_INTS; i++)
            if (buf[i] != i + size * (size - 1) / 2) ok = 0;
        printf("bigring size=%d bytes=%zu ok=%d\n", size, BIGRING_INTS * sizeof(int), ok);
    } else {
        MPI_Recv(buf, BIGRING_INTS, MPI_INT, rank - 1, 8, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        for (i = 0; i < BIGRING_INTS; i++) buf[i] += rank;
        MPI_Send(buf, BIGRING_INTS, MPI_INT, (rank + 1) % size, 8, MPI_COMM_WORLD);
    }
    free(buf);
    return ok ? 0 : 1;
}

static int maps(int rank) {
    char line[4096];
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f) return 1;
    while (fgets(line, sizeof line, f)) {
        char *path = strchr(line, '/');
        if (path && (strstr(path, "/libmpi.so") || strstr(path, "/libmpich.so"))) {
            printf("maps rank=%d lib=%s", rank, path);
            break;
        }
    }
    fclose(f);
    return 0;
}

static int shm(int rank) {
    MPI_Comm node;
    MPI_Win win;
    int nrank, nsize, *base, ok = 1;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
    MPI_Comm_rank(node, &nrank);
    MPI_Comm_size(node, &nsize);
    MPI_Win_allocate_shared(sizeof(int), sizeof(int), MPI_INFO_NULL, node, &base, &win);
    MPI_Win_fence(0, win);
    *base = 1000 + nrank;
    MPI_Win_fence(0, win);
    for (int r = 0; r < nsize; r++) {
        MPI_Aint sz;
        int du, *p;
        MPI_Win_shared_query(win, r, &sz, &du, &p);
        if (*p != 1000 + r) ok = 0;
    }
    MPI_Win_fence(0, win);
    printf("shm rank=%d node_size=%d ok=%d\n", rank, nsize, ok);
    MPI_Win_free(&win);
    MPI_Comm_free(&node);
    return ok ? 0 : 1;
}

static double pingpong_loop(char *buf, int bytes, int iters, int rank) {
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    for (int i = 0; i < iters; i++) {
        if (rank == 0) {
            MPI_Send(buf, bytes, MPI_CHAR, 1, 9, MPI_COMM_WORLD);
            MPI_Recv(buf, bytes, MPI_CHAR, 1, 9, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        } else if (rank == 1) {
            MPI_Recv(buf, bytes, MPI_CHAR, 0, 9, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            MPI_Send(buf, bytes, MPI_CHAR, 0, 9, MPI_COMM_WORLD);
        }
    }
    return MPI_Wtime() - t0;
}

static int pingpong(int rank, int size, int reps) {
    const int big = 1 << 20, lat_iters = 1000, bw_iters = 20;
    char *buf = calloc(1, big);
    if (!buf || size < 2) return 1;
    pingpong_loop(buf, 8, 100, rank);       /* warm-up: connections, first-touch of buffers */
    pingpong_loop(buf, big, 4, rank);
    for (int r = 0; r < reps; r++) {
        double t = pingpong_loop(buf, 8, lat_iters, rank);
        if (rank == 0) printf("lat8 %.3f\n", t / (2.0 * lat_iters) * 1e6);
        t = pingpong_loop(buf, big, bw_iters, rank);
        if (rank == 0) printf("bw1m %.1f\n", 2.0 * bw_iters * (big / 1048576.0) / t);
    }
    free(buf);
    return 0;
}

int main(int argc, char **argv) {
    int rank, size, rc = 2;
    const char *what = argc > 1 ? argv[1] : "allreduce";
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (!strcmp(what, "allreduce")) rc = allreduce(rank, size);
    else if (!strcmp(what, "ring")) rc = ring(rank, size);
    else if (!strcmp(what, "bigring")) rc = bigring(rank, size);
    else if (!strcmp(what, "maps")) rc = maps(rank);
    else if (!strcmp(what, "shm")) rc = shm(rank);
    else if (!strcmp(what, "pingpong")) rc = pingpong(rank, size, argc > 2 ? atoi(argv[2]) : 10);
    else if (!strcmp(what, "version")) {
        char v[MPI_MAX_LIBRARY_VERSION_STRING];
        int len;
        MPI_Get_library_version(v, &len);
        if (rank == 0) printf("version %.*s\n", (int)strcspn(v, "\n,"), v);
        rc = 0;
    }
    fflush(stdout);
    MPI_Finalize();
    return rc;
}
