/* test_bf16.c: bf16 rounding and the CPU backend's typed GEMM (gemm_ex).
 *
 * Rounding: vd_bf16_from_f32 (a bit trick) against a reference by distances: the two bf16
 * neighbours of x (truncation and the next one up), the nearer one in double, ties to the even
 * mantissa (torch's rule); plus NaN, inf and overflow.
 * gemm_ex: every transpose combination, a bf16 weight with an fp32 activation and both bf16,
 * against a double-precision product of the operands' bf16 values. Stated bound: fp32
 * accumulation of K products, |C - ref| <= K * 2^-23 * sum_k |a_k b_k| (the classic gamma_K
 * bound with u = 2^-24, doubled for the blocked order). Against the unrounded fp32 product the
 * inputs' rounding (<= 2^-9 relative each) adds 2^-8 * sum |a b|: that bound is checked too,
 * and the inputs' rounding is checked to be visible (not an fp32 GEMM in disguise). */
#include <stdint.h>

#include "test_util.h"
#include "vera/backend.h"
#include "vera/tensor.h"

/* reference rounding by distance (x finite, no overflow past the largest bf16) */
static uint16_t ref_round(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof(u));
    uint16_t lo = (uint16_t)(u >> 16), hi = (uint16_t)(lo + 1); /* same sign: magnitude up */
    double dlo = fabs((double)vd_bf16_to_f32(lo) - x), dhi = fabs((double)vd_bf16_to_f32(hi) - x);
    if (dlo < dhi) return lo;
    if (dhi < dlo) return hi;
    return (lo & 1) ? hi : lo;
}

static uint64_t rng = 0x9e3779b97f4a7c15ULL;
static uint32_t next_u32(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}
static float next_uniform(void) { return (float)(next_u32() & 0xffffff) / 16777216.0f * 2.0f - 1.0f; }

static void test_rounding(void) {
    int bad = 0;
    for (int i = 0; i < 2000000; i++) {
        uint32_t u = next_u32();
        if (i % 4 == 0) u = (u & 0xffff0000u) | 0x8000u; /* exact ties */
        float x;
        memcpy(&x, &u, sizeof(x));
        if (!isfinite(x) || fabsf(x) > 3.38e38f) continue;
        if (vd_bf16_from_f32(x) != ref_round(x) && bad++ < 5)
            CHECK(0, "x=%a: got 0x%04x want 0x%04x", (double)x, vd_bf16_from_f32(x), ref_round(x));
    }
    CHECK(bad == 0, "%d roundings differ", bad);
    CHECK(vd_bf16_from_f32(1.0f + 0x1p-8f) == 0x3f80, "tie 1+2^-8 rounds down to even 1.0");
    CHECK(vd_bf16_from_f32(1.0f + 0x3p-8f) == 0x3f82, "tie 1+3*2^-8 rounds up to even");
    CHECK(vd_bf16_from_f32(INFINITY) == 0x7f80 && vd_bf16_from_f32(-INFINITY) == 0xff80, "inf");
    CHECK(vd_bf16_from_f32(3.4e38f) == 0x7f80, "overflow rounds to inf (torch)");
    uint16_t n = vd_bf16_from_f32(NAN);
    CHECK((n & 0x7f80) == 0x7f80 && (n & 0x7f), "NaN stays NaN: 0x%04x", n);
    uint32_t snan_bits = 0x7f800001u; /* a signalling NaN whose payload sits in the dropped half */
    float snan;
    memcpy(&snan, &snan_bits, sizeof(snan));
    CHECK(isnan(vd_bf16_to_f32(vd_bf16_from_f32(snan))), "low-payload NaN stays NaN");
}

static void test_gemm_ex(const vd_backend *be) {
    const int M = 37, N = 53, K = 301;
    float *a = malloc(sizeof(float) * M * K), *b = malloc(sizeof(float) * K * N);
    uint16_t *a16 = malloc(sizeof(uint16_t) * M * K), *b16 = malloc(sizeof(uint16_t) * K * N);
    float *c = malloc(sizeof(float) * M * N), *c0 = malloc(sizeof(float) * M * N);
    for (int i = 0; i < M * K; i++) a[i] = next_uniform();
    for (int i = 0; i < K * N; i++) b[i] = next_uniform();
    vd_cpu_bf16_narrow(a16, a, (size_t)M * K);
    vd_cpu_bf16_narrow(b16, b, (size_t)K * N);
    for (int i = 0; i < M * K; i++) CHECK(a16[i] == vd_bf16_from_f32(a[i]), "narrow %d", i);
    for (int i = 0; i < M * N; i++) c0[i] = next_uniform();
    const float alpha = 0.75f, beta = 0.5f;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++)
            for (int both = 0; both < 2; both++) {
                /* stored A is M x K (K x M when transposed); the same values either way */
                int lda = ta ? M : K, ldb = tb ? K : N;
                float *as = malloc(sizeof(float) * M * K), *bs = malloc(sizeof(float) * K * N);
                uint16_t *as16 = malloc(sizeof(uint16_t) * M * K), *bs16 = malloc(sizeof(uint16_t) * K * N);
                for (int i = 0; i < M; i++)
                    for (int k = 0; k < K; k++) {
                        size_t at = ta ? (size_t)k * M + i : (size_t)i * K + k;
                        as[at] = a[i * K + k];
                        as16[at] = a16[i * K + k];
                    }
                for (int k = 0; k < K; k++)
                    for (int j = 0; j < N; j++) {
                        size_t at = tb ? (size_t)j * K + k : (size_t)k * N + j;
                        bs[at] = b[k * N + j];
                        bs16[at] = b16[k * N + j];
                    }
                memcpy(c, c0, sizeof(float) * M * N);
                be->gemm_ex(ta, tb, M, N, K, alpha, both ? (const void *)as16 : as, both ? VD_DTYPE_BF16 : VD_DTYPE_F32,
                            lda, bs16, VD_DTYPE_BF16, ldb, beta, c, N);
                double worst_acc = 0, worst_in = 0;
                double worst_abs = 0, worst_abs32 = 0;
                for (int i = 0; i < M; i++)
                    for (int j = 0; j < N; j++) {
                        double ref = 0, ref32 = 0, mag = 0;
                        for (int k = 0; k < K; k++) {
                            double x = vd_bf16_to_f32(a16[i * K + k]), y = vd_bf16_to_f32(b16[k * N + j]);
                            ref += x * y;
                            ref32 += (double)a[i * K + k] * b[k * N + j];
                            mag += fabs(x * y);
                        }
                        double r = alpha * ref + beta * c0[i * N + j], r32 = alpha * ref32 + beta * c0[i * N + j];
                        double m = alpha * mag + fabs(beta * c0[i * N + j]);
                        double e = fabs(c[i * N + j] - r) / (K * 0x1p-23 * m);
                        double e32 = fabs(c[i * N + j] - r32) / (0x1p-8 * m + K * 0x1p-23 * m);
                        if (e > worst_acc) worst_acc = e;
                        if (e32 > worst_in) worst_in = e32;
                        worst_abs = fmax(worst_abs, fabs(c[i * N + j] - r));
                        worst_abs32 = fmax(worst_abs32, fabs(c[i * N + j] - r32));
                    }
                CHECK(worst_acc <= 1.0, "ta=%d tb=%d both=%d: error %.3g of the fp32-accumulation bound", ta, tb, both,
                      worst_acc);
                CHECK(worst_in <= 1.0, "ta=%d tb=%d both=%d: error %.3g of the bf16-input bound", ta, tb, both, worst_in);
                /* the inputs' rounding (~2^-9 relative) dwarfs fp32 accumulation error (~2^-24) */
                CHECK(worst_abs32 > 16 * worst_abs, "ta=%d tb=%d both=%d: no bf16 rounding visible (%.3g vs %.3g): an fp32 GEMM?",
                      ta, tb, both, worst_abs32, worst_abs);
                free(as); free(bs); free(as16); free(bs16);
            }
    /* F32 x F32 is the fp32 gemm bit for bit */
    memcpy(c, c0, sizeof(float) * M * N);
    be->gemm_ex(0, 0, M, N, K, alpha, a, VD_DTYPE_F32, K, b, VD_DTYPE_F32, N, beta, c, N);
    float *c2 = malloc(sizeof(float) * M * N);
    memcpy(c2, c0, sizeof(float) * M * N);
    be->gemm(0, 0, M, N, K, alpha, a, K, b, N, beta, c2, N);
    CHECK(!memcmp(c, c2, sizeof(float) * M * N), "gemm_ex(F32, F32) == gemm");
    /* to_bf16 is the host rounding */
    uint16_t *t16 = malloc(sizeof(uint16_t) * M * K);
    be->to_bf16(t16, a, (size_t)M * K);
    CHECK(!memcmp(t16, a16, sizeof(uint16_t) * M * K), "to_bf16 == vd_bf16_from_f32");
    free(t16); free(c2); free(a); free(b); free(a16); free(b16); free(c); free(c0);
}

static void die_on_f16(void *arg) {
    const vd_backend *be = arg;
    float x = 1, y = 1, z = 0;
    be->gemm_ex(0, 0, 1, 1, 1, 1.0f, &x, VD_DTYPE_F16, 1, &y, VD_DTYPE_F32, 1, 0.0f, &z, 1);
}

int main(void) {
    const vd_backend *be = vd_backend_cpu();
    test_rounding();
    test_gemm_ex(be);
    CHECK(be->set_tf32 == NULL, "the CPU has no TF32");
    CHECK_DIES(die_on_f16, (void *)be, "gemm_ex on F16 x F32");
    TEST_END();
}
