/* test_kernels.c: the CPU backend's two attention paths (direct loops for short sequences, BLAS
 * GEMMs for long ones) against each other, forward and backward, on random inputs, and both
 * against a central finite difference of a scalar function of the attention output. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"
#include "vera/backend.h"
#include "vera/prng.h"

static float urand(uint64_t *s) { *s = vd_mix64(*s + 0x9E3779B97F4A7C15ULL); return (float)((double)(*s >> 11) / 9007199254740992.0 * 2.0 - 1.0); }

/* L = sum R * attention(qkv), evaluated in float by the backend's current path. */
static double attn_loss(const vd_backend *be, const float *qkv, const float *R, float *out, float *att, int B, int T, int C, int NH) {
    be->attention_forward(out, att, qkv, B, T, C, NH);
    double L = 0;
    for (int i = 0; i < B * T * C; i++) L += (double)R[i] * out[i];
    return L;
}

int main(void) {
    const vd_backend *be = vd_backend_cpu();
    const int B = 2, T = 9, C = 12, NH = 3;
    size_t nqkv = (size_t)B * T * 3 * C, no = (size_t)B * T * C, natt = (size_t)B * NH * T * T;
    float *qkv = malloc(sizeof(float) * nqkv), *R = malloc(sizeof(float) * no);
    float *out[2], *att[2], *dqkv[2], *datt = malloc(sizeof(float) * natt);
    uint64_t seed = 42;
    for (size_t i = 0; i < nqkv; i++) qkv[i] = 2.0f * urand(&seed);
    for (size_t i = 0; i < no; i++) R[i] = urand(&seed);
    for (int path = 0; path < 2; path++) {
        vd_cpu_attention_gemm_min_t = path == 0 ? 1 << 30 : 1; /* 0: loops, 1: GEMMs */
        out[path] = malloc(sizeof(float) * no);
        att[path] = malloc(sizeof(float) * natt);
        dqkv[path] = malloc(sizeof(float) * nqkv);
        be->attention_forward(out[path], att[path], qkv, B, T, C, NH);
        be->attention_backward(dqkv[path], datt, R, qkv, att[path], B, T, C, NH);
        /* finite differences on a sample of inputs, in double around the float function */
        float *o = malloc(sizeof(float) * no), *a = malloc(sizeof(float) * natt);
        for (size_t i = 0; i < nqkv; i += 7) {
            float keep = qkv[i];
            const float h = 1e-2f;
            qkv[i] = keep + h;
            double lp = attn_loss(be, qkv, R, o, a, B, T, C, NH);
            qkv[i] = keep - h;
            double lm = attn_loss(be, qkv, R, o, a, B, T, C, NH);
            qkv[i] = keep;
            char what[64];
            snprintf(what, sizeof(what), "path %d dqkv[%zu] vs finite difference", path, i);
            CHECK_CLOSE(dqkv[path][i], (lp - lm) / (2.0 * h), 2e-2, 2e-3, what);
        }
        free(o);
        free(a);
    }
    for (size_t i = 0; i < no; i++) CHECK_CLOSE(out[1][i], out[0][i], 1e-5, 1e-6, "forward: GEMM path vs loops");
    for (size_t i = 0; i < natt; i++) CHECK_CLOSE(att[1][i], att[0][i], 1e-5, 1e-7, "softmax: GEMM path vs loops");
    for (size_t i = 0; i < nqkv; i++) CHECK_CLOSE(dqkv[1][i], dqkv[0][i], 1e-4, 1e-6, "backward: GEMM path vs loops");
    /* the causal mask: no weight on the future */
    for (int t = 0; t < T; t++)
        for (int t2 = t + 1; t2 < T; t2++) CHECK(att[1][(size_t)t * T + t2] == 0.0f, "future weight at %d,%d", t, t2);
    for (int p = 0; p < 2; p++) { free(out[p]); free(att[p]); free(dqkv[p]); }
    free(qkv); free(R); free(datt);
    TEST_END();
}
