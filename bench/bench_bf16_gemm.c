/* bench_bf16_gemm.c: how the CPU backend's bf16 GEMMs should compute, measured side by side.
 *
 * For each shape of a linear layer's forward (x W: N x in times in x out) and input gradient
 * (dY W^T), in one process and interleaved (rep by rep, so load on the machine hits all
 * columns alike), it times:
 *   fp32     cblas_sgemm on fp32 operands (what --precision fp32 runs; the reference)
 *   convert  vd_cpu_gemm_ex with a BF16 weight: widen the weight to fp32, round the activation
 *            to bf16, cblas_sgemm (the backend's default)
 *   sbgemm   vd_cpu_gemm_ex through OpenBLAS's cblas_sbgemm, when the loaded library exports it
 *            ("absent" otherwise: Debian 12's 0.3.21 is built without BUILD_BFLOAT16)
 * and prints GFLOP/s (2 N in out / best time) and each column's ratio to fp32.
 *
 *   build:  cmake --build build --target bench_bf16_gemm
 *   run:    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 build/bench/bench_bf16_gemm [N] [reps]
 * Results: docs/benchmarks.md, "bf16 GEMM on the CPU". */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "vera/backend.h"
#include "vera/tensor.h"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static float *rand_floats(size_t n, uint64_t seed) {
    float *x = malloc(sizeof(float) * n);
    if (!x) { fprintf(stderr, "out of memory\n"); exit(1); }
    for (size_t i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        x[i] = (float)((double)(seed >> 40) / 16777216.0 * 2.0 - 1.0);
    }
    return x;
}

typedef struct {
    const char *name;
    int tb;          /* 0: x W (forward); 1: dY W^T (input gradient) */
    int in, out;
} shape;

int main(int argc, char **argv) {
    vd_blas_ensure_kernel(argv);
    int N = argc > 1 ? atoi(argv[1]) : 1024, reps = argc > 2 ? atoi(argv[2]) : 5;
    if (N < 1 || reps < 1) {
        fprintf(stderr, "usage: bench_bf16_gemm [N tokens >= 1] [reps >= 1]\n");
        return 2;
    }
    const shape shapes[] = {
        {"GPT-2 c_attn fwd", 0, 768, 2304},   {"GPT-2 c_attn dx", 1, 768, 2304},
        {"GPT-2 c_fc fwd", 0, 768, 3072},     {"GPT-2 mlp.c_proj fwd", 0, 3072, 768},
        {"SmolLM2 q_proj fwd", 0, 576, 576},  {"SmolLM2 gate_proj fwd", 0, 576, 1536},
        {"SmolLM2 down_proj dx", 1, 1536, 576},
    };
    int has_sb = vd_cpu_has_sbgemm();
    printf("bf16 GEMM on the CPU: N %d tokens, best of %d, OpenBLAS kernel %s%s, cblas_sbgemm %s\n", N, reps,
           vd_blas_kernel_name(), vd_blas_kernel_note(), has_sb ? "present" : "absent");
    printf("%-24s %5s %5s | %9s | %9s %6s | %9s %6s\n", "shape", "in", "out", "fp32", "convert", "ratio", "sbgemm",
           "ratio");
    for (size_t si = 0; si < sizeof(shapes) / sizeof(shapes[0]); si++) {
        const shape *s = &shapes[si];
        int K = s->tb ? s->out : s->in, M = N, Nc = s->tb ? s->in : s->out; /* C is M x Nc */
        size_t nw = (size_t)s->in * s->out;
        float *x = rand_floats((size_t)M * K, 1 + si), *w = rand_floats(nw, 100 + si), *c = rand_floats((size_t)M * Nc, 7);
        uint16_t *w16 = malloc(sizeof(uint16_t) * nw);
        vd_cpu_bf16_narrow(w16, w, nw);
        /* W is in x out: forward B = W (K x N), input gradient B = W^T with W stored N x K */
        int ldb = s->out;
        double best[3] = {1e30, 1e30, 1e30};
        for (int r = 0; r < reps; r++)
            for (int col = 0; col < 3; col++) {
                if (col == 2 && !has_sb) continue;
                vd_cpu_bf16_gemm_impl = col == 2 ? VD_CPU_BF16_SBGEMM : VD_CPU_BF16_CONVERT;
                double t0 = now();
                if (col == 0)
                    vd_cpu_gemm_ex(0, s->tb, M, Nc, K, 1.0f, x, VD_DTYPE_F32, K, w, VD_DTYPE_F32, ldb, 0.0f, c, Nc);
                else
                    vd_cpu_gemm_ex(0, s->tb, M, Nc, K, 1.0f, x, VD_DTYPE_F32, K, w16, VD_DTYPE_BF16, ldb, 0.0f, c, Nc);
                double dt = now() - t0;
                if (dt < best[col]) best[col] = dt;
            }
        vd_cpu_bf16_gemm_impl = VD_CPU_BF16_CONVERT;
        double flop = 2.0 * M * Nc * K;
        printf("%-24s %5d %5d | %9.1f | %9.1f %6.3f |", s->name, s->in, s->out, flop / best[0] * 1e-9,
               flop / best[1] * 1e-9, best[0] / best[1]);
        if (has_sb) printf(" %9.1f %6.3f\n", flop / best[2] * 1e-9, best[0] / best[2]);
        else printf(" %9s %6s\n", "absent", "-");
        free(x); free(w); free(c); free(w16);
    }
    printf("GFLOP/s = 2 N in out / best time; ratio = fp32 time / column time (above 1: faster than fp32)\n");
    return 0;
}
