/* prng.c: torch's CPU generator (MT19937), its float uniform_ stream, and PEFT's VeRA
 * projections built from it, reproduced bit for bit.
 *
 * What torch does (ATen, checked against torch 2.15 headers and outputs):
 *  - torch.Generator().manual_seed(seed) keeps the full 64-bit seed for initial_seed(), but
 *    the engine (at::mt19937_engine::init_with_uint32) seeds with `seed & 0xffffffff` through
 *    the standard init_genrand recurrence. Keys that differ only above bit 31 give the same
 *    stream; we do the same, on purpose.
 *  - float uniform_(from, to) on CPU (native/cpu/DistributionTemplates.h, uniform_kernel):
 *    from/to are cast to float first; each element takes ONE 32-bit draw (random(), not
 *    random64(); only double tensors take 64 bits), serially in memory order, and computes
 *    in float:  u = (x & 0xFFFFFF) * 2^-24;  v = u * (to - from) + from.
 *    If v rounded up to `to`, torch returns `from` instead (keeps the range half-open).
 *  - PEFT's _kaiming_init: fan = shape[1], std = sqrt(2) / sqrt(fan), bound = sqrt(3) * std
 *    in double, then uniform_(-bound, bound). vera_A (r x max_in) first, then vera_B
 *    (max_out x r), from one generator seeded with projection_prng_key.
 * This file is compiled with -ffp-contract=off: a fused u * (to - from) + from rounds once
 * instead of twice and would break bit-exactness. */
#include "vera/prng.h"

#include <math.h>

#include "vera/common.h"

#define VD_MT_N 624
#define VD_MT_M 397
#define VD_MT_MATRIX_A 0x9908b0dfU
#define VD_MT_UPPER_MASK 0x80000000U
#define VD_MT_LOWER_MASK 0x7fffffffU

void vd_mt19937_seed(vd_mt19937 *g, uint64_t seed) {
    /* init_genrand on the low 32 bits: exactly what torch's engine does with a 64-bit seed */
    g->state[0] = (uint32_t)(seed & 0xffffffffU);
    for (uint32_t j = 1; j < VD_MT_N; j++) {
        uint32_t prev = g->state[j - 1];
        g->state[j] = 1812433253U * (prev ^ (prev >> 30)) + j;
    }
    g->next = VD_MT_N; /* the first draw regenerates the whole state, as torch's left_ = 1 does */
}

/* Regenerates all 624 words (the standard MT19937 "twist"). */
static void vd_mt19937_twist(vd_mt19937 *g) {
    uint32_t *s = g->state;
    for (int k = 0; k < VD_MT_N; k++) {
        uint32_t y = (s[k] & VD_MT_UPPER_MASK) | (s[(k + 1) % VD_MT_N] & VD_MT_LOWER_MASK);
        s[k] = s[(k + VD_MT_M) % VD_MT_N] ^ (y >> 1) ^ ((y & 1U) ? VD_MT_MATRIX_A : 0U);
    }
    g->next = 0;
}

uint32_t vd_mt19937_next(vd_mt19937 *g) {
    if (g->next >= VD_MT_N) vd_mt19937_twist(g);
    uint32_t y = g->state[g->next++];
    /* tempering */
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680U;
    y ^= (y << 15) & 0xefc60000U;
    y ^= y >> 18;
    return y;
}

void vd_torch_uniform_f32(vd_mt19937 *g, float *out, size_t n, double from, double to) {
    /* torch casts the double arguments to the tensor's type before anything else */
    const float f = (float)from;
    const float t = (float)to;
    const float range = t - f;
    /* 24 = std::numeric_limits<float>::digits: keep as many bits as a float mantissa holds */
    const uint32_t mask = (1U << 24) - 1U;
    const float divisor = 1.0f / (float)(1U << 24);
    for (size_t i = 0; i < n; i++) {
        float u = (float)(vd_mt19937_next(g) & mask) * divisor;
        float v = fmaf(u, range, f); /* one rounding, as torch's vectorised builds compute it */
        out[i] = (v == t) ? f : v;
    }
}

/* PEFT's _kaiming_init on a (rows x fan) tensor: the bound is computed in double exactly as
 * Python does it (sqrt(3) * (sqrt(2) / sqrt(fan)), not sqrt(6 / fan), which can round differently). */
static void vd_kaiming_uniform(vd_mt19937 *g, float *out, size_t rows, int32_t fan) {
    double gain = sqrt(2.0);
    double std = gain / sqrt((double)fan);
    double bound = sqrt(3.0) * std;
    vd_torch_uniform_f32(g, out, rows * (size_t)fan, -bound, bound);
}

void vd_vera_projections(uint64_t key, int32_t r, int32_t max_in, int32_t max_out, float *A, float *B) {
    vd_require(r > 0 && max_in > 0 && max_out > 0);
    vd_mt19937 g;
    vd_mt19937_seed(&g, key);
    vd_kaiming_uniform(&g, A, (size_t)r, max_in);       /* vera_A: (r, max_in), fan = max_in */
    vd_kaiming_uniform(&g, B, (size_t)max_out, r);      /* vera_B: (max_out, r), fan = r */
}

float vd_mt19937_normal(vd_mt19937 *g) {
    /* Box-Muller on two 24-bit uniforms. u1 is in (0, 1] so log(u1) is finite; only the
     * cosine branch is used, so the generator carries no cached second sample. */
    const double scale = 1.0 / 16777216.0;
    double u1 = ((double)(vd_mt19937_next(g) >> 8) + 1.0) * scale;
    double u2 = (double)(vd_mt19937_next(g) >> 8) * scale;
    const double two_pi = 6.283185307179586476925286766559;
    return (float)(sqrt(-2.0 * log(u1)) * cos(two_pi * u2));
}

uint64_t vd_mix64(uint64_t x) {
    /* splitmix64's finalizer (Stafford's Mix13): a bijection on 64 bits with full avalanche.
     * Note vd_mix64(0) == 0: callers combine seed and counters before mixing. */
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}
