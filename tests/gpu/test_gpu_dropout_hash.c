/* test_gpu_dropout_hash: the CUDA backend's dropout stream equals the CPU backend's, bit for
 * bit. src/backend/cuda/dropout_hash.h holds the __host__ __device__ functions the dropout kernel
 * calls; here that same header is compiled as plain C on the host and compared with
 * vd_mix64 / vd_dropout_uniform and with the CPU backend's dropout op. Runs everywhere (no GPU,
 * no CUDA toolkit needed); on a GPU, tests/gpu/test_gpu_kernels.c checks the kernel itself. */
#include <stdint.h>
#include <string.h>

#include "../test_util.h"
#include "vera/backend.h"
#include "vera/prng.h"

#include "../../src/backend/cuda/dropout_hash.h"

static uint64_t g_state = 0x243F6A8885A308D3ULL;
static uint64_t next64(void) {
    g_state += 0x9E3779B97F4A7C15ULL;
    return vd_mix64(g_state);
}

int main(void) {
    /* the mixer on edge values and a million random ones */
    const uint64_t edges[] = {0, 1, 2, 0x7fffffffffffffffULL, 0x8000000000000000ULL, UINT64_MAX,
                              0x9E3779B97F4A7C15ULL, 0xbf58476d1ce4e5b9ULL};
    for (size_t i = 0; i < sizeof(edges) / sizeof(edges[0]); i++)
        CHECK(vd_hd_mix64(edges[i]) == vd_mix64(edges[i]), "mix64(%016llx)", (unsigned long long)edges[i]);
    int bad = 0;
    for (int i = 0; i < 1000000 && bad < 5; i++) {
        uint64_t x = next64();
        if (vd_hd_mix64(x) != vd_mix64(x)) { bad++; CHECK(0, "mix64(%016llx)", (unsigned long long)x); }
    }

    /* the uniform stream: random (seed, row, col), rows and columns at the edges */
    bad = 0;
    for (int i = 0; i < 1000000 && bad < 5; i++) {
        uint64_t seed = next64(), row = i % 3 == 0 ? next64() : (uint64_t)(i % 4096), col = (uint64_t)(next64() % 50304);
        float a = vd_hd_dropout_uniform(seed, row, col), b = vd_dropout_uniform(seed, row, col);
        if (memcmp(&a, &b, sizeof(float)) != 0) {
            bad++;
            CHECK(0, "uniform(%llu, %llu, %llu): %.9g vs %.9g", (unsigned long long)seed, (unsigned long long)row,
                  (unsigned long long)col, (double)a, (double)b);
        }
        CHECK(a >= 0.0f && a < 1.0f, "uniform out of [0, 1): %.9g", (double)a);
    }
    for (size_t i = 0; i < sizeof(edges) / sizeof(edges[0]); i++)
        for (size_t j = 0; j < sizeof(edges) / sizeof(edges[0]); j++) {
            float a = vd_hd_dropout_uniform(edges[i], edges[j], edges[(i + j) % 8]);
            float b = vd_dropout_uniform(edges[i], edges[j], edges[(i + j) % 8]);
            CHECK(memcmp(&a, &b, sizeof(float)) == 0, "uniform at edges %zu %zu", i, j);
        }

    /* the whole op: the CPU backend's dropout vs the element function the kernel applies,
     * including in place, p near 0 and 1, and a large row0 (the global token index) */
    const vd_backend *be = vd_backend_cpu();
    const int N = 37, C = 301;
    const float ps[] = {0.0f, 0.1f, 0.5f, 0.9f, 0.999f};
    const uint64_t row0s[] = {0, 12345, (uint64_t)1 << 40};
    float *x = be->alloc(sizeof(float) * N * C), *y = be->alloc(sizeof(float) * N * C);
    float *want = malloc(sizeof(float) * N * C);
    for (size_t pi = 0; pi < sizeof(ps) / sizeof(ps[0]); pi++)
        for (size_t ri = 0; ri < sizeof(row0s) / sizeof(row0s[0]); ri++) {
            uint64_t seed = next64();
            for (int i = 0; i < N * C; i++) x[i] = (float)((int)(next64() % 2001) - 1000) / 37.0f;
            float p = ps[pi], keep_scale = 1.0f / (1.0f - p);
            for (int n = 0; n < N; n++)
                for (int c = 0; c < C; c++)
                    want[n * C + c] = vd_hd_dropout_apply(x[n * C + c], p, keep_scale, seed, row0s[ri] + (uint64_t)n,
                                                          (uint64_t)c);
            be->dropout(y, x, N, C, p, seed, row0s[ri]);
            CHECK(memcmp(y, want, sizeof(float) * N * C) == 0, "dropout p=%g row0=%llu differs", (double)p,
                  (unsigned long long)row0s[ri]);
            be->dropout(x, x, N, C, p, seed, row0s[ri]); /* in place */
            CHECK(memcmp(x, want, sizeof(float) * N * C) == 0, "in-place dropout p=%g differs", (double)p);
        }
    be->free(x);
    be->free(y);
    free(want);
    TEST_END();
}
