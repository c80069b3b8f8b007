/* bench_attention.c: the CPU backend's attention forward and backward (row statistics kept, P
 * recomputed in the backward) against the kernels that kept the whole softmax
 * (tests/attn_reference.h, the same BLAS calls, one thread), on random inputs; prints the
 * fastest of `reps` runs of each and checks that both give the same bits. The reference runs
 * its BLAS calls outside a parallel region (the backend runs them inside one), so its times
 * are indicative; the bits are exact. Run by hand:
 *   build/bench/bench_attention [B T n_head n_kv_head head_dim reps]   (default SmolLM2's
 *   heads at 4 x 256: 4 256 9 3 64 7) */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../tests/attn_reference.h"
#include "vera/backend.h"
#include "vera/common.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static float *random_floats(size_t n, unsigned *seed) {
    float *x = mallocCheck(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) x[i] = (float)rand_r(seed) / (float)RAND_MAX - 0.5f;
    return x;
}

int main(int argc, char **argv) {
    int a[6] = {4, 256, 9, 3, 64, 7};
    if (argc != 1 && argc != 7) {
        fprintf(stderr, "usage: %s [B T n_head n_kv_head head_dim reps]\n", argv[0]);
        return 2;
    }
    for (int i = 1; i < argc; i++) {
        char *end;
        long v = strtol(argv[i], &end, 10);
        if (*end || v < 1 || v > 1 << 20) {
            fprintf(stderr, "%s: argument %d '%s': expected a positive integer\n", argv[0], i, argv[i]);
            return 2;
        }
        a[i - 1] = (int)v;
    }
    if (a[2] % a[3]) {
        fprintf(stderr, "%s: n_head %d is not a multiple of n_kv_head %d\n", argv[0], a[2], a[3]);
        return 2;
    }
    const vd_backend *be = vd_backend_cpu();
    vd_backend_cpu_set_threads(1);
    vd_attn_shape s = {a[0], a[1], a[2], a[3], a[4], a[2] * a[4], a[3] * a[4], NULL};
    size_t rows = (size_t)s.B * s.T, nq = rows * s.q_stride, nkv = rows * s.kv_stride;
    size_t natt = (size_t)s.B * s.n_head * s.T * s.T;
    unsigned seed = 1;
    float *q = random_floats(nq, &seed), *k = random_floats(nkv, &seed), *v = random_floats(nkv, &seed);
    float *dout = random_floats(nq, &seed);
    float *o[2], *dq[2], *dk[2], *dv[2];
    for (int j = 0; j < 2; j++) {
        o[j] = mallocCheck(sizeof(float) * nq);
        dq[j] = mallocCheck(sizeof(float) * nq);
        dk[j] = mallocCheck(sizeof(float) * nkv);
        dv[j] = mallocCheck(sizeof(float) * nkv);
    }
    float *saved = mallocCheck(sizeof(float) * be->attention_saved_floats(&s));
    float *P = mallocCheck(sizeof(float) * natt), *datt = mallocCheck(sizeof(float) * natt);
    int gemm = s.T >= vd_cpu_attention_gemm_min_t;
    double best[2][2] = {{1e30, 1e30}, {1e30, 1e30}}; /* [backend, reference][forward, backward] */
    for (int r = 0; r < a[5]; r++)
        for (int j = 0; j < 2; j++) {
            double t0 = now_s();
            if (j == 0) be->attention_forward(o[0], saved, q, k, v, &s);
            else ref_attention_forward(be, gemm, o[1], P, q, k, v, &s);
            double t1 = now_s();
            if (j == 0) be->attention_backward(dq[0], dk[0], dv[0], datt, dout, q, k, v, saved, &s);
            else ref_attention_backward(be, gemm, dq[1], dk[1], dv[1], datt, dout, q, k, v, P, &s);
            double t2 = now_s();
            if (t1 - t0 < best[j][0]) best[j][0] = t1 - t0;
            if (t2 - t1 < best[j][1]) best[j][1] = t2 - t1;
        }
    int same = !memcmp(o[0], o[1], sizeof(float) * nq) && !memcmp(dq[0], dq[1], sizeof(float) * nq) &&
               !memcmp(dk[0], dk[1], sizeof(float) * nkv) && !memcmp(dv[0], dv[1], sizeof(float) * nkv);
    printf("attention B %d T %d n_head %d n_kv_head %d head_dim %d (%s path), 1 thread, best of %d:\n", s.B, s.T,
           s.n_head, s.n_kv_head, s.head_dim, gemm ? "GEMM" : "direct", a[5]);
    printf("  row statistics (saved %zu floats): forward %.2f ms, backward %.2f ms\n",
           be->attention_saved_floats(&s), 1e3 * best[0][0], 1e3 * best[0][1]);
    printf("  softmax kept   (saved %zu floats): forward %.2f ms, backward %.2f ms\n", natt, 1e3 * best[1][0],
           1e3 * best[1][1]);
    printf("  out, dq, dk, dv: %s\n", same ? "bit-identical" : "DIFFERENT");
    return same ? 0 : 1;
}
