/*
 * Reference benchmark for bench/bench_probe.py: the collectives hpcobs-mpi-probe measures,
 * timed the same way in C.
 *
 * Same method as the probe: warm-up, an iteration count fitted to a per-cell time budget
 * (agreed by MPI_Allreduce MAX, so every rank runs the same count), timed samples with
 * MPI_Wtime, the slowest rank's time per sample (MPI_Reduce MAX), then min / p50 / p99 / max
 * over samples. Two variants: by default (-t 0) every sample is one call timed on its own,
 * as the probe does; with -t BATCH_S (the bench's "C batch" uses 20e-6, for information),
 * cells whose calls take less than BATCH_S are timed in samples of
 * k = ceil(BATCH_S / per-call estimate) back-to-back calls (k <= -k MAX_BATCH, default 1000),
 * one MPI_Wtime pair per sample, divided by k, and ITERS / k samples (at least MIN_ITERS).
 * Message sizes mean what they mean in the probe:
 * bytes per rank (allreduce, bcast, allgather contribution, reduce_scatter input vector),
 * bytes per destination (alltoall); reductions sum doubles.
 *
 * Buffers are allocated and filled like the probe's numpy buffers: 2 MiB-aligned with
 * MADV_HUGEPAGE (numpy asks for huge pages for arrays of 4 MiB and more) and filled with 1.0
 * doubles, so every page is real memory (not the shared zero page) and sums stay normal.
 *
 * Usage: mpirun -n N ./mpi_collectives [-b CELL_BUDGET_S] [-m MAX_ITERS] [-o OPS] [-s SIZES]
 *                                        [-t BATCH_S] [-k MAX_BATCH]
 * Output (rank 0): one line per cell,
 * "op size_bytes iterations min p50 p99 max calls_per_sample" (seconds per call).
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

enum op { ALLREDUCE, BCAST, ALLGATHER, ALLTOALL, REDUCE_SCATTER, BARRIER, NOPS };
static const char *OP_NAMES[NOPS] = {"allreduce", "bcast",          "allgather",
                                     "alltoall",  "reduce_scatter", "barrier"};

static int rank, nranks;
static char *sbuf, *rbuf;
static int *recvcounts;

static void run_once(enum op op, long size) {
    int count = (int)(size / 8);
    switch (op) {
    case ALLREDUCE:
        MPI_Allreduce(sbuf, rbuf, count, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
        break;
    case BCAST:
        MPI_Bcast(sbuf, (int)size, MPI_BYTE, 0, MPI_COMM_WORLD);
        break;
    case ALLGATHER:
        MPI_Allgather(sbuf, (int)size, MPI_BYTE, rbuf, (int)size, MPI_BYTE, MPI_COMM_WORLD);
        break;
    case ALLTOALL:
        MPI_Alltoall(sbuf, (int)size, MPI_BYTE, rbuf, (int)size, MPI_BYTE, MPI_COMM_WORLD);
        break;
    case REDUCE_SCATTER:
        MPI_Reduce_scatter(sbuf, rbuf, recvcounts, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
        break;
    case BARRIER:
        MPI_Barrier(MPI_COMM_WORLD);
        break;
    default:
        break;
    }
}

static char *data_buffer(size_t nbytes) {
    void *p = NULL;
    nbytes = (nbytes + 7) / 8 * 8;
    if (posix_memalign(&p, 2u << 20, nbytes)) {
        fprintf(stderr, "out of memory\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
#ifdef MADV_HUGEPAGE
    if (nbytes >= (4u << 20)) madvise(p, nbytes, MADV_HUGEPAGE);
#endif
    for (size_t i = 0; i < nbytes / 8; i++) ((double *)p)[i] = 1.0;
    return p;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Linear interpolation between closest ranks (numpy's default "linear" method). */
static double quantile(const double *sorted, long n, double q) {
    double pos = q * (double)(n - 1);
    long lo = (long)pos;
    long hi = lo + 1 < n ? lo + 1 : lo;
    double frac = pos - (double)lo;
    return sorted[lo] + (sorted[hi] - sorted[lo]) * frac;
}

static double timed_batch(enum op op, long size, long iters) {
    double start = MPI_Wtime();
    for (long i = 0; i < iters; i++) run_once(op, size);
    double took = (MPI_Wtime() - start) / (double)(iters > 0 ? iters : 1), slowest;
    MPI_Allreduce(&took, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    return slowest;
}

static double batch_seconds = 0.0;
static long max_batch = 1000;

static void measure(enum op op, long size, double budget, long max_iters, long min_iters) {
    int count = (int)(size / 8);
    for (int r = 0; r < nranks; r++) recvcounts[r] = count / nranks + (r < count % nranks);
    double per = timed_batch(op, size, 2);
    long warm = (long)(0.1 * budget / (per > 1e-9 ? per : 1e-9));
    if (warm > 100) warm = 100;
    if (warm > 0) per = timed_batch(op, size, warm);
    long iters = (long)(0.9 * budget / (per > 1e-9 ? per : 1e-9));
    if (iters < min_iters) iters = min_iters;
    if (iters > max_iters) iters = max_iters;
    long k = 1;
    if (batch_seconds > 0 && per < batch_seconds) {
        k = max_batch;
        if (per > 0 && batch_seconds / per < (double)max_batch) {
            k = (long)(batch_seconds / per); /* ceil without libm */
            if ((double)k * per < batch_seconds) k++;
        }
        if (k > max_batch) k = max_batch;
        if (k < 1) k = 1;
    }
    long n = iters / k;
    if (n < min_iters) n = min_iters;
    double *mine = malloc(sizeof(double) * (size_t)n);
    double *slowest = malloc(sizeof(double) * (size_t)n);
    MPI_Barrier(MPI_COMM_WORLD);
    for (long i = 0; i < n; i++) {
        double t0 = MPI_Wtime();
        for (long j = 0; j < k; j++) run_once(op, size);
        mine[i] = (MPI_Wtime() - t0) / (double)k;
    }
    MPI_Reduce(mine, slowest, (int)n, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
    if (rank == 0) {
        qsort(slowest, (size_t)n, sizeof(double), cmp_double);
        printf("%s %ld %ld %.9e %.9e %.9e %.9e %ld\n", OP_NAMES[op], op == BARRIER ? 0L : size,
               n * k, slowest[0], quantile(slowest, n, 0.5), quantile(slowest, n, 0.99),
               slowest[n - 1], k);
        fflush(stdout);
    }
    free(mine);
    free(slowest);
}

int main(int argc, char **argv) {
    double budget = 0.05;
    long max_iters = 10000, min_iters = 5;
    char ops_arg[256] = "allreduce,bcast,allgather,alltoall,reduce_scatter,barrier";
    char sizes_arg[1024] = "8,32,128,512,2048,8192,32768,131072,524288,2097152,4194304";
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "-b")) budget = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "-m")) max_iters = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "-o")) snprintf(ops_arg, sizeof ops_arg, "%s", argv[i + 1]);
        else if (!strcmp(argv[i], "-s")) snprintf(sizes_arg, sizeof sizes_arg, "%s", argv[i + 1]);
        else if (!strcmp(argv[i], "-t")) batch_seconds = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "-k")) max_batch = atol(argv[i + 1]);
    }
    long sizes[64];
    int nsizes = 0;
    for (char *tok = strtok(sizes_arg, ","); tok && nsizes < 64; tok = strtok(NULL, ","))
        sizes[nsizes++] = atol(tok);
    long max_size = 8;
    for (int i = 0; i < nsizes; i++)
        if (sizes[i] > max_size) max_size = sizes[i];
    /* alltoall and allgather need size * nranks bytes */
    sbuf = data_buffer((size_t)max_size * (size_t)nranks);
    rbuf = data_buffer((size_t)max_size * (size_t)nranks);
    recvcounts = calloc((size_t)nranks, sizeof(int));
    for (char *tok = strtok(ops_arg, ","); tok; tok = strtok(NULL, ",")) {
        for (int op = 0; op < NOPS; op++) {
            if (strcmp(tok, OP_NAMES[op])) continue;
            if (op == BARRIER) {
                measure(BARRIER, 0, budget, max_iters, min_iters);
                continue;
            }
            for (int i = 0; i < nsizes; i++) measure(op, sizes[i], budget, max_iters, min_iters);
        }
    }
    free(sbuf);
    free(rbuf);
    free(recvcounts);
    MPI_Finalize();
    return 0;
}
