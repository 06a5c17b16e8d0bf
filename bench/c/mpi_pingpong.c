/*
 * Reference benchmark for bench/bench_probe.py: the probe's pairwise ping-pong, in C.
 *
 * Ranks 0 and 1 (any others wait at the final barrier) run a warm-up, then ITERS round
 * trips of SIZE bytes (MPI_BYTE, tag 1): rank 0 times each round trip on its own with
 * MPI_Wtime (MPI_Send, then MPI_Recv), rank 1 answers (MPI_Recv, then MPI_Send) untimed. A
 * sample is half a round trip (one way), as in the probe; min / p50 / p99 / max over the
 * samples, quantiles interpolated linearly (numpy's default, the probe's). The buffer is
 * 2 MiB-aligned and filled, like the probe's.
 *
 * Usage: mpirun -n 2 ./mpi_pingpong [-n ITERS] [-w WARMUP] [-s SIZE]
 * Output (rank 0): "pingpong size_bytes iterations min p50 p99 max" (seconds, one way).
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double quantile(const double *sorted, long n, double q) {
    double pos = q * (double)(n - 1);
    long lo = (long)pos;
    long hi = lo + 1 < n ? lo + 1 : lo;
    double frac = pos - (double)lo;
    return sorted[lo] + (sorted[hi] - sorted[lo]) * frac;
}

int main(int argc, char **argv) {
    long iters = 10000, warmup = 1000, size = 8;
    MPI_Init(&argc, &argv);
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "-n")) iters = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "-w")) warmup = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "-s")) size = atol(argv[i + 1]);
    }
    int rank, nranks;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);
    if (nranks < 2 || iters < 1 || size < 0) {
        if (rank == 0) fprintf(stderr, "need 2 ranks, ITERS >= 1, SIZE >= 0\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    void *buf = NULL;
    size_t nbytes = (size_t)(size > 8 ? size : 8);
    if (posix_memalign(&buf, 2u << 20, nbytes)) MPI_Abort(MPI_COMM_WORLD, 2);
    for (size_t i = 0; i < nbytes / 8; i++) ((double *)buf)[i] = 1.0;
    double *samples = malloc(sizeof(double) * (size_t)iters);
    if (samples == NULL) MPI_Abort(MPI_COMM_WORLD, 2);
    int count = (int)size;
    if (rank == 0) {
        for (long i = 0; i < warmup; i++) {
            MPI_Send(buf, count, MPI_BYTE, 1, 1, MPI_COMM_WORLD);
            MPI_Recv(buf, count, MPI_BYTE, 1, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        }
        for (long i = 0; i < iters; i++) {
            double t0 = MPI_Wtime();
            MPI_Send(buf, count, MPI_BYTE, 1, 1, MPI_COMM_WORLD);
            MPI_Recv(buf, count, MPI_BYTE, 1, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            samples[i] = (MPI_Wtime() - t0) / 2;
        }
        qsort(samples, (size_t)iters, sizeof(double), cmp_double);
        printf("pingpong %ld %ld %.9e %.9e %.9e %.9e\n", size, iters, samples[0],
               quantile(samples, iters, 0.5), quantile(samples, iters, 0.99),
               samples[iters - 1]);
    } else if (rank == 1) {
        for (long i = 0; i < warmup + iters; i++) {
            MPI_Recv(buf, count, MPI_BYTE, 0, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            MPI_Send(buf, count, MPI_BYTE, 0, 1, MPI_COMM_WORLD);
        }
    }
    MPI_Barrier(MPI_COMM_WORLD);
    free(samples);
    free(buf);
    MPI_Finalize();
    return 0;
}
