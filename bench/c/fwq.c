/*
 * Fixed work quanta (FWQ), the classic OS-noise test, for bench/bench_noise.py.
 *
 * One process per core: it times QUANTA back-to-back executions of the same fixed amount of
 * work (a chain of dependent multiply-adds in registers: no memory traffic, no system call)
 * for SECONDS seconds. On a quiet core every quantum takes the same time; whatever else runs
 * on that core (a daemon waking up, an interrupt) shows up as quanta that take longer.
 *
 * Usage: fwq -c TARGET_NS           print the work count whose quantum takes ~TARGET_NS
 *        fwq WORK SECONDS OUTFILE   run, write each quantum's duration (ns, uint32 LE)
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t sink;

static inline uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline void quantum(long work) {
    uint64_t x = sink;
    for (long i = 0; i < work; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        __asm__ volatile("" : "+r"(x)); /* keep the chain: no closed form, no vectorising */
    }
    sink = x;
}

static long calibrate(double target_ns) {
    long work = 1000;
    for (;;) {
        uint64_t best = UINT64_MAX;
        for (int r = 0; r < 200; r++) {
            uint64_t t0 = now_ns();
            quantum(work);
            uint64_t took = now_ns() - t0;
            if (took < best) best = took;
        }
        if ((double)best >= target_ns / 4 || work > (1l << 40)) {
            return (long)((double)work * target_ns / (double)(best ? best : 1));
        }
        work *= 4;
    }
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "-c")) {
        printf("%ld\n", calibrate(atof(argv[2])));
        return 0;
    }
    if (argc != 4) {
        fprintf(stderr, "usage: fwq -c TARGET_NS | fwq WORK SECONDS OUTFILE\n");
        return 2;
    }
    long work = atol(argv[1]);
    double seconds = atof(argv[2]);
    size_t cap = 1u << 20, n = 0;
    uint32_t *took = malloc(cap * sizeof *took);
    if (!took) return 1;
    for (int i = 0; i < 100; i++) quantum(work); /* warm-up */
    uint64_t end = now_ns() + (uint64_t)(seconds * 1e9);
    uint64_t t0 = now_ns();
    while (t0 < end) {
        quantum(work);
        uint64_t t1 = now_ns();
        if (n == cap) {
            cap *= 2;
            uint32_t *grown = realloc(took, cap * sizeof *took);
            if (!grown) return 1;
            took = grown;
        }
        uint64_t d = t1 - t0;
        took[n++] = d > UINT32_MAX ? UINT32_MAX : (uint32_t)d;
        t0 = t1;
    }
    FILE *out = fopen(argv[3], "wb");
    if (!out || fwrite(took, sizeof *took, n, out) != n || fclose(out)) return 1;
    free(took);
    return 0;
}
