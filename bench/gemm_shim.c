/* gemm_shim.c: an LD_PRELOAD library that times every cblas_sgemm call of a process, grouped by
 * (transA, transB, M, N, K), and prints the table to stderr at exit. Used by
 * docs/benchmarks.md to attribute vera-dist's GEMM time to the operations that issue it
 * (each operation has its own shape). Not part of the build; compile it by hand:
 *
 *   cc -O2 -shared -fPIC bench/gemm_shim.c -o /tmp/gemm_shim.so -ldl
 *   LD_PRELOAD=/tmp/gemm_shim.so build/vera-dist train ...
 *
 * Only the calling thread's wall time is measured (the GEMM's own threads run inside it). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef void (*sgemm_fn)(int, int, int, int, int, int, float, const float *, int, const float *, int, float,
                         float *, int);

#define SLOTS 4096
typedef struct {
    int ta, tb, m, n, k, used;
    long calls;
    double seconds;
} slot;
static slot g_slots[SLOTS];
static double g_total;
static struct timespec g_start;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

__attribute__((constructor)) static void shim_start(void) { clock_gettime(CLOCK_MONOTONIC, &g_start); }

static int by_time(const void *a, const void *b) {
    double x = ((const slot *)a)->seconds, y = ((const slot *)b)->seconds;
    return x < y ? 1 : x > y ? -1 : 0;
}

__attribute__((destructor)) static void shim_report(void) {
    if (g_total == 0.0) return; /* helper processes that never call a GEMM stay quiet */
    double wall = now() - ((double)g_start.tv_sec + 1e-9 * (double)g_start.tv_nsec);
    qsort(g_slots, SLOTS, sizeof(slot), by_time);
    fprintf(stderr, "gemm_shim: process wall %.3f s, inside cblas_sgemm %.3f s (%.1f%%)\n", wall, g_total,
            100.0 * g_total / wall);
    fprintf(stderr, "gemm_shim: %2s %2s %7s %7s %7s %8s %10s %8s %9s\n", "tA", "tB", "M", "N", "K", "calls", "seconds",
            "share", "GFLOP/s");
    for (int i = 0; i < SLOTS && g_slots[i].used; i++) {
        const slot *s = &g_slots[i];
        double flop = 2.0 * s->m * (double)s->n * s->k * (double)s->calls;
        fprintf(stderr, "gemm_shim: %2d %2d %7d %7d %7d %8ld %10.3f %7.1f%% %9.1f\n", s->ta, s->tb, s->m, s->n, s->k,
                s->calls, s->seconds, 100.0 * s->seconds / g_total, s->seconds > 0 ? flop / s->seconds / 1e9 : 0.0);
    }
}

void cblas_sgemm(int order, int ta, int tb, int m, int n, int k, float alpha, const float *a, int lda, const float *b,
                 int ldb, float beta, float *c, int ldc) {
    static sgemm_fn real = NULL;
    if (!real) real = (sgemm_fn)dlsym(RTLD_NEXT, "cblas_sgemm");
    double t0 = now();
    real(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    double dt = now() - t0;
    int tA = ta == 112 || ta == 113, tB = tb == 112 || tb == 113; /* CblasTrans / CblasConjTrans */
    unsigned h = (unsigned)(tA * 31 + tB) * 2654435761u ^ (unsigned)m * 40503u ^ (unsigned)n * 9973u ^ (unsigned)k;
    for (unsigned probe = 0; probe < SLOTS; probe++) {
        slot *s = &g_slots[(h + probe) % SLOTS];
        if (!s->used) {
            *s = (slot){tA, tB, m, n, k, 1, 0, 0.0};
        }
        if (s->ta == tA && s->tb == tB && s->m == m && s->n == n && s->k == k) {
            s->calls++;
            s->seconds += dt;
            break;
        }
    }
    g_total += dt;
}
