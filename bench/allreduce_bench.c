/* allreduce_bench.c: how long vera-dist's gradient all-reduce (vd_comm_allreduce_sum_f32: one
 * in-place MPI_Allreduce of floats, the call the trainer makes once per optimizer step) takes for
 * a given number of floats on the current MPI job, e.g. across the network-namespace nodes of
 * tests/multinode/lib.sh (bench/multinode_links.sh runs it at each link rate).
 *
 *   mpirun ... allreduce_bench --floats N[,N...] [--iters K] [--warmup W] [--max_seconds S]
 *
 * For every N: W untimed calls, then up to K timed ones (fewer when their total passes S seconds,
 * at least one). Each timed call starts after a barrier, and its time is the slowest rank's
 * (what the step waits for). After every call each rank checks the sum (rank-dependent small
 * integers, exact in fp32), so a collective that skipped data cannot pass as fast.
 * Rank 0 prints one JSON line per N:
 *   {"floats": N, "bytes": 4N, "ranks": P, "nodes": M, "iters": K, "median_s": ..., "min_s": ...,
 *    "max_s": ..., "mean_s": ...}
 * nodes = the number of distinct shared-memory nodes (MPI_COMM_TYPE_SHARED), as comm_mpi.c counts
 * them. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vera/cli.h"
#include "vera/comm.h"
#include "vera/common.h"

#define BENCH_MAX_SIZES 64

/* An integer option value in [min, max], or death naming the option. */
static uint64_t bench_parse_count(const char *opt, const char *text, uint64_t min, uint64_t max) {
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || text[0] == '-' || v < min || v > max)
        vd_die("allreduce_bench: %s '%s': expected an integer from %llu to %llu", opt, text, (unsigned long long)min,
               (unsigned long long)max);
    return (uint64_t)v;
}

static double bench_parse_seconds(const char *opt, const char *text) {
    char *end = NULL;
    errno = 0;
    double v = strtod(text, &end);
    if (errno != 0 || end == text || *end != '\0' || !(v > 0.0) || v > 1e6)
        vd_die("allreduce_bench: %s '%s': expected seconds > 0", opt, text);
    return v;
}

/* --floats "N,N,...": the sizes to measure, into sizes[]; returns how many. */
static int bench_parse_sizes(const char *text, uint64_t *sizes) {
    char buf[1024];
    if (strlen(text) >= sizeof(buf)) vd_die("allreduce_bench: --floats: list too long (at most %zu characters)", sizeof(buf) - 1);
    strcpy(buf, text);
    int n = 0;
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (n == BENCH_MAX_SIZES) vd_die("allreduce_bench: --floats: at most %d sizes", BENCH_MAX_SIZES);
        sizes[n++] = bench_parse_count("--floats", tok, 1, 0x7fffffffull); /* MPI's int count */
    }
    if (n == 0) vd_die("allreduce_bench: --floats '%s': expected N[,N...]", text);
    return n;
}

/* What rank r contributes at index i: small integers, so the fp32 sum is exact in any order. */
static float bench_value(int32_t r, size_t i) { return (float)((r + 1) * (int32_t)(i % 5 + 1)); }

static void bench_fill(float *buf, size_t n, int32_t rank) {
    for (size_t i = 0; i < n; i++) buf[i] = bench_value(rank, i);
}

static void bench_verify(const float *buf, size_t n, int32_t world) {
    for (size_t i = 0; i < n; i++) {
        float want = (float)(world * (world + 1) / 2 * (int32_t)(i % 5 + 1));
        if (buf[i] != want) vd_die("allreduce_bench: wrong sum at index %zu: %g, expected %g", i, (double)buf[i], (double)want);
    }
}

/* The slowest rank's value (seconds, as integer nanoseconds through the u64 all-gather). */
static double bench_max_over_ranks(const vd_comm *c, double s, uint64_t *scratch) {
    vd_comm_allgather_u64(c, (uint64_t)(s * 1e9), scratch);
    uint64_t m = 0;
    for (int32_t r = 0; r < c->world; r++) if (scratch[r] > m) m = scratch[r];
    return (double)m * 1e-9;
}

static int bench_cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    vd_comm c;
    vd_comm_init(&c, &argc, &argv);
    const char *floats = vd_cli_take_option(&argc, argv, "floats");
    const char *iters_s = vd_cli_take_option(&argc, argv, "iters");
    const char *warm_s = vd_cli_take_option(&argc, argv, "warmup");
    const char *max_s = vd_cli_take_option(&argc, argv, "max_seconds");
    /* not vd_cli_refuse_rest: its hint names a vera-dist sub-command */
    if (argc > 1)
        vd_die("allreduce_bench: unknown argument '%s' (it takes --floats N[,N...] --iters K --warmup W --max_seconds S)",
               argv[1]);
    if (!floats) vd_die("allreduce_bench: --floats N[,N...] is required (floats per all-reduce)");
    uint64_t sizes[BENCH_MAX_SIZES];
    int n_sizes = bench_parse_sizes(floats, sizes);
    uint64_t iters = iters_s ? bench_parse_count("--iters", iters_s, 1, 1000000) : 10;
    uint64_t warmup = warm_s ? bench_parse_count("--warmup", warm_s, 0, 1000000) : 1;
    double max_seconds = max_s ? bench_parse_seconds("--max_seconds", max_s) : 60.0;

    uint64_t *scratch = mallocCheck(sizeof(uint64_t) * (size_t)c.world);
    /* nodes: ranks that are first on their node */
    vd_comm_allgather_u64(&c, c.local_rank == 0, scratch);
    int32_t nodes = 0;
    for (int32_t r = 0; r < c.world; r++) nodes += (int32_t)scratch[r];

    double *times = mallocCheck(sizeof(double) * (size_t)iters);
    for (int s = 0; s < n_sizes; s++) {
        size_t n = (size_t)sizes[s];
        float *buf = mallocCheck(sizeof(float) * n);
        for (uint64_t w = 0; w < warmup; w++) {
            bench_fill(buf, n, c.rank);
            vd_comm_allreduce_sum_f32(&c, buf, n);
            bench_verify(buf, n, c.world);
        }
        uint64_t done = 0;
        double total = 0.0;
        while (done < iters) {
            bench_fill(buf, n, c.rank);
            vd_comm_barrier(&c);
            double t0 = vd_time_s();
            vd_comm_allreduce_sum_f32(&c, buf, n);
            double dt = bench_max_over_ranks(&c, vd_time_s() - t0, scratch);
            bench_verify(buf, n, c.world);
            times[done++] = dt;
            total += dt;
            if (total >= max_seconds) break; /* every rank sees the same max: they stop together */
        }
        qsort(times, (size_t)done, sizeof(double), bench_cmp_double);
        double median = done % 2 ? times[done / 2] : 0.5 * (times[done / 2 - 1] + times[done / 2]);
        if (c.rank == 0) {
            printf("{\"floats\": %zu, \"bytes\": %zu, \"ranks\": %d, \"nodes\": %d, \"iters\": %llu, "
                   "\"median_s\": %.6g, \"min_s\": %.6g, \"max_s\": %.6g, \"mean_s\": %.6g}\n",
                   n, 4 * n, (int)c.world, (int)nodes, (unsigned long long)done, median, times[0],
                   times[done - 1], total / (double)done);
            if (fflush(stdout) != 0) vd_die("allreduce_bench: cannot write stdout");
        }
        free(buf);
    }
    free(times);
    free(scratch);
    vd_comm_free(&c);
    return 0;
}
