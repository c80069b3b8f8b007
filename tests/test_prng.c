/* test_prng.c: the MT19937 stream, float uniform_ and the VeRA projections against values
 * produced by PyTorch 2.15 (CPU) and PEFT 0.21, compared as float bits.
 *
 * Regenerate the reference values with (torch + peft installed):
 *
 *   import torch
 *   from peft.tuners.vera.model import _kaiming_init
 *   bits = lambda t: t.view(torch.int32).item() & 0xffffffff
 *   idx = [0, 1, 2, 3, 4, 623, 624, 625, 1000, 5000]
 *   for seed in [0, 42, 2**40 + 123, 2**63 - 5, 2**64 - 1]:
 *       g = torch.Generator().manual_seed(seed)
 *       u = torch.empty(5001).uniform_(generator=g)
 *       print(seed, [hex(bits(u[i])) for i in idx])
 *   g = torch.Generator().manual_seed(0)
 *   u = torch.empty(64).uniform_(2.0**20, 2.0**20 + 1, generator=g)
 *   print([hex(bits(x)) for x in u])
 *   for key, r, max_in, max_out in [(0, 4, 16, 48), (12345, 8, 768, 2304)]:
 *       g = torch.Generator().manual_seed(key)
 *       A = _kaiming_init((r, max_in), generator=g)
 *       B = _kaiming_init((max_out, r), generator=g)
 *       a, b = A.flatten(), B.flatten()
 *       ia = [0, 1, a.numel() // 2, a.numel() - 1]
 *       ib = [0, 1, b.numel() // 2, b.numel() - 1]
 *       print(key, [(i, hex(bits(a[i]))) for i in ia], [(i, hex(bits(b[i]))) for i in ib])
 */
#include <stdint.h>
#include <string.h>

#include "test_util.h"
#include "vera/prng.h"

static uint32_t f32_bits(float x) {
    uint32_t b;
    memcpy(&b, &x, sizeof(b));
    return b;
}

#define N_IDX 10
static const size_t k_idx[N_IDX] = {0, 1, 2, 3, 4, 623, 624, 625, 1000, 5000};

typedef struct {
    uint64_t seed;
    uint32_t bits[N_IDX];
} uniform_case;

/* torch.empty(5001).uniform_(generator=torch.Generator().manual_seed(seed)) at k_idx */
static const uniform_case k_uniform[] = {
    {0ULL, {0x3efe1558, 0x3f44aa2f, 0x3db533a8, 0x3e073300, 0x3e9d6686,
            0x3c473900, 0x3eb71e74, 0x3e233e04, 0x3eea3c4e, 0x3f70553b}},
    {42ULL, {0x3f61dc66, 0x3f6a3db3, 0x3ec406b8, 0x3f75950e, 0x3ec7e8d4,
             0x3e619564, 0x3efac5c8, 0x3e41f764, 0x3f3ab9f5, 0x3f5847b2}},
    {(1ULL << 40) + 123ULL, {0x3e979bfc, 0x3f043d6d, 0x3e80dafc, 0x3f304542, 0x3d977ee0,
                             0x3d9df770, 0x3eb39ef6, 0x3f583e3d, 0x3ef8402c, 0x3f50d9d9}},
    {(1ULL << 63) - 5ULL, {0x3f6e49e6, 0x3f292539, 0x3f7b13ab, 0x3f6eb267, 0x3e345e8c,
                           0x3f3c951b, 0x3dd1dd90, 0x3f2e589e, 0x3f2ad009, 0x3f757642}},
    {UINT64_MAX, {0x3f7e69a3, 0x3f124122, 0x3f11ec0c, 0x3d4ac470, 0x3f7e37b4,
                  0x3e603cc0, 0x3de70768, 0x3e410c58, 0x3c80e620, 0x3d602380}},
};

/* torch.empty(64).uniform_(2**20, 2**20 + 1, generator=manual_seed(0)): float spacing there is
 * 1/8, so most values round, and elements 26 and 51 round up to `to`, which torch maps to `from`. */
static const uint32_t k_clamp[64] = {
    0x49800004, 0x49800006, 0x49800001, 0x49800001, 0x49800002, 0x49800005, 0x49800004, 0x49800007,
    0x49800004, 0x49800005, 0x49800003, 0x49800003, 0x49800000, 0x49800001, 0x49800002, 0x49800004,
    0x49800006, 0x49800006, 0x49800001, 0x49800002, 0x49800005, 0x49800007, 0x49800003, 0x49800007,
    0x49800003, 0x49800004, 0x49800000, 0x49800000, 0x49800001, 0x49800003, 0x49800002, 0x49800007,
    0x49800001, 0x49800002, 0x49800001, 0x49800000, 0x49800002, 0x49800007, 0x49800006, 0x49800006,
    0x49800004, 0x49800002, 0x49800005, 0x49800000, 0x49800001, 0x49800002, 0x49800007, 0x49800006,
    0x49800002, 0x49800004, 0x49800007, 0x49800000, 0x49800006, 0x49800005, 0x49800007, 0x49800002,
    0x49800005, 0x49800001, 0x49800001, 0x49800002, 0x49800006, 0x49800006, 0x49800002, 0x49800005,
};

typedef struct {
    uint64_t key;
    int32_t r, max_in, max_out;
    size_t a_idx[4];
    uint32_t a_bits[4];
    size_t b_idx[4];
    uint32_t b_bits[4];
} projection_case;

/* PEFT's _kaiming_init: A (r, max_in) then B (max_out, r) from one generator */
static const projection_case k_proj[] = {
    {0ULL, 4, 16, 48,
     {0, 1, 32, 63}, {0xbb963b71, 0x3ea83195, 0xbecb3a10, 0x3e3d712e},
     {0, 1, 96, 191}, {0x3f2c1f2d, 0xbe1e4b4a, 0xbe7190f8, 0xbee7ea24}},
    {12345ULL, 8, 768, 2304, /* GPT-2 small c_attn: 768 -> 2304 */
     {0, 1, 3072, 6143}, {0x3dae668e, 0x3d896ea8, 0xbd8bad9e, 0xbc9c5b37},
     {0, 1, 9216, 18431}, {0xbe8f56fc, 0xbedd6a1f, 0x3ecb65df, 0x3efb6344}},
};

static void test_raw_mt19937(void) {
    /* The C++ standard's check on std::mt19937: default seed 5489, the 10000th output. */
    vd_mt19937 g;
    vd_mt19937_seed(&g, 5489);
    uint32_t x = 0;
    for (int i = 0; i < 10000; i++) x = vd_mt19937_next(&g);
    CHECK(x == 4123659995U, "10000th output of mt19937(5489) = %u, want 4123659995", x);
    /* init_genrand(5489)'s first output */
    vd_mt19937_seed(&g, 5489);
    x = vd_mt19937_next(&g);
    CHECK(x == 3499211612U, "first output of mt19937(5489) = %u, want 3499211612", x);
}

static void test_uniform_stream(void) {
    enum { N = 5001 };
    static float u[N];
    for (size_t c = 0; c < sizeof(k_uniform) / sizeof(k_uniform[0]); c++) {
        vd_mt19937 g;
        vd_mt19937_seed(&g, k_uniform[c].seed);
        vd_torch_uniform_f32(&g, u, N, 0.0, 1.0);
        for (int i = 0; i < N_IDX; i++) {
            uint32_t got = f32_bits(u[k_idx[i]]);
            CHECK(got == k_uniform[c].bits[i], "seed %llu element %zu: bits 0x%08x, torch 0x%08x",
                  (unsigned long long)k_uniform[c].seed, k_idx[i], got, k_uniform[c].bits[i]);
        }
    }
    /* Drawing in pieces continues the same stream (the trainer never relies on one big call). */
    vd_mt19937 g;
    vd_mt19937_seed(&g, 42);
    vd_torch_uniform_f32(&g, u, 700, 0.0, 1.0);
    vd_torch_uniform_f32(&g, u + 700, N - 700, 0.0, 1.0);
    CHECK(f32_bits(u[1000]) == k_uniform[1].bits[8], "split draw: element 1000 bits 0x%08x", f32_bits(u[1000]));
    CHECK(f32_bits(u[5000]) == k_uniform[1].bits[9], "split draw: element 5000 bits 0x%08x", f32_bits(u[5000]));
}

static void test_uniform_rounding_and_clamp(void) {
    float u[64];
    vd_mt19937 g;
    vd_mt19937_seed(&g, 0);
    vd_torch_uniform_f32(&g, u, 64, 1048576.0, 1048577.0);
    for (int i = 0; i < 64; i++) {
        CHECK(f32_bits(u[i]) == k_clamp[i], "uniform_(2^20, 2^20+1) element %d: bits 0x%08x, torch 0x%08x",
              i, f32_bits(u[i]), k_clamp[i]);
        CHECK(u[i] < 1048577.0f, "element %d reached the upper bound", i);
    }
}

static void test_projections(void) {
    for (size_t c = 0; c < sizeof(k_proj) / sizeof(k_proj[0]); c++) {
        const projection_case *p = &k_proj[c];
        size_t na = (size_t)p->r * (size_t)p->max_in, nb = (size_t)p->max_out * (size_t)p->r;
        float *A = malloc(na * sizeof(float)), *B = malloc(nb * sizeof(float));
        if (!A || !B) { fprintf(stderr, "out of memory\n"); exit(1); }
        vd_vera_projections(p->key, p->r, p->max_in, p->max_out, A, B);
        for (int i = 0; i < 4; i++) {
            CHECK(f32_bits(A[p->a_idx[i]]) == p->a_bits[i], "key %llu r %d: A[%zu] bits 0x%08x, PEFT 0x%08x",
                  (unsigned long long)p->key, p->r, p->a_idx[i], f32_bits(A[p->a_idx[i]]), p->a_bits[i]);
            CHECK(f32_bits(B[p->b_idx[i]]) == p->b_bits[i], "key %llu r %d: B[%zu] bits 0x%08x, PEFT 0x%08x",
                  (unsigned long long)p->key, p->r, p->b_idx[i], f32_bits(B[p->b_idx[i]]), p->b_bits[i]);
        }
        /* every element inside the Kaiming bound (half-open) */
        double bound_a = sqrt(3.0) * (sqrt(2.0) / sqrt((double)p->max_in));
        double bound_b = sqrt(3.0) * (sqrt(2.0) / sqrt((double)p->r));
        size_t bad = 0;
        for (size_t i = 0; i < na; i++) bad += !(A[i] >= -(float)bound_a && A[i] < (float)bound_a);
        for (size_t i = 0; i < nb; i++) bad += !(B[i] >= -(float)bound_b && B[i] < (float)bound_b);
        CHECK(bad == 0, "%zu projection elements outside the Kaiming bound", bad);
        free(A);
        free(B);
    }
}

static void test_normal(void) {
    enum { N = 200000 };
    vd_mt19937 g;
    vd_mt19937_seed(&g, 7);
    double sum = 0, sumsq = 0;
    int finite = 1;
    for (int i = 0; i < N; i++) {
        float z = vd_mt19937_normal(&g);
        finite &= isfinite(z) != 0;
        sum += z;
        sumsq += (double)z * z;
    }
    double mean = sum / N, var = sumsq / N - mean * mean;
    CHECK(finite, "non-finite normal sample");
    /* standard errors: mean 1/sqrt(N) ~ 0.0022, variance sqrt(2/N) ~ 0.0032: allow ~5 sigma */
    CHECK_CLOSE(mean, 0.0, 0.0, 0.012, "normal mean");
    CHECK_CLOSE(var, 1.0, 0.0, 0.016, "normal variance");
    /* deterministic in the seed */
    vd_mt19937 g1, g2;
    vd_mt19937_seed(&g1, 99);
    vd_mt19937_seed(&g2, 99);
    int same = 1;
    for (int i = 0; i < 1000; i++) same &= f32_bits(vd_mt19937_normal(&g1)) == f32_bits(vd_mt19937_normal(&g2));
    CHECK(same, "normal stream not deterministic");
}

static void test_mix64(void) {
    /* splitmix64 seeded with 0: the first output is the finalizer of the golden-ratio increment */
    uint64_t x = vd_mix64(0x9e3779b97f4a7c15ULL);
    CHECK(x == 0xe220a8397b1dcdafULL, "vd_mix64(golden) = 0x%016llx, want 0xe220a8397b1dcdaf", (unsigned long long)x);
    x = vd_mix64(2 * 0x9e3779b97f4a7c15ULL);
    CHECK(x == 0x6e789e6aa1b965f4ULL, "vd_mix64(2 golden) = 0x%016llx, want 0x6e789e6aa1b965f4", (unsigned long long)x);
    CHECK(vd_mix64(1) != vd_mix64(2), "vd_mix64 collides on 1, 2");
}

static void projections_r0(void *arg) {
    float A[1], B[1];
    vd_vera_projections(0, 0, 16, 48, A, B);
}

int main(void) {
    test_raw_mt19937();
    test_uniform_stream();
    test_uniform_rounding_and_clamp();
    test_projections();
    test_normal();
    test_mix64();
    /* a zero rank is a caller bug (config validation rejects it first): stop, do not write */
    CHECK_DIES(projections_r0, NULL, "internal check failed");
    TEST_END();
}
