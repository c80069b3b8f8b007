/* cpu_vmath.h: a branch-free expf for the CPU backend's elementwise loops (GELU, SiLU, the
 * softmaxes). glibc's expf / tanhf are scalar calls, so a loop that calls them never
 * vectorises; this one is plain arithmetic GCC turns into SIMD at whatever width the build
 * allows (SSE2 without -march). Same bits on every call for the same input: no table, no
 * branch, no reassociation (the project builds without -ffast-math).
 *
 * Method: e^x = 2^k e^r, k = round(x / ln 2), r = x - k ln 2 in two parts (Cody-Waite), so
 * |r| <= ln2 / 2; e^r by its Taylor polynomial to r^7 (truncation r^8/8! < 6e-9 relative, below
 * half a float ulp), evaluated by Horner; 2^k built from the exponent bits. Inputs are clamped
 * to [-87, 88] so 2^k stays a normal float: e^x below e^-87 (1.6e-38) is returned as e^-87
 * rather than a denormal or 0, and above e^88 as e^88 rather than inf; every caller here only
 * adds it to 1 or to a sum of terms <= 1, where that makes no difference. NaN in, NaN out: the
 * clamps keep NaN (their compares are false), the polynomial carries it, and k is read from
 * bits rather than converted from float to int (undefined for NaN).
 * Accuracy against exp in double: within 2 float ulp on [-87, 88] (tests/test_vmath.c). */
#ifndef VERA_CPU_VMATH_H
#define VERA_CPU_VMATH_H

#include <stdint.h>
#include <string.h>

static inline float vd_vexpf(float x) {
    const float log2e = 1.44269504088896341f;
    const float ln2_hi = 0.693145751953125f;       /* ln 2 with its low 12 bits zero: k * ln2_hi is exact */
    const float ln2_lo = 1.428606765330187045e-06f; /* ln 2 - ln2_hi */
    const float round_magic = 12582912.0f;          /* 1.5 * 2^23: adding it rounds to an integer */
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    float t = x * log2e + round_magic; /* round_magic + k, k = round(x / ln 2) */
    float kf = t - round_magic;
    float r = x - kf * ln2_hi;
    r = r - kf * ln2_lo;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    /* 2^k: k is also the low bits of t's pattern (t in [2^23, 2^24), where 1 is one ulp), so
     * no float-to-int conversion, which for NaN would be undefined; NaN's p makes NaN below */
    uint32_t tbits, bits;
    memcpy(&tbits, &t, sizeof(tbits));
    bits = (tbits - (0x4B400000u - 127u)) << 23; /* 0x4B400000: round_magic's pattern; unsigned wraps */
    float scale;
    memcpy(&scale, &bits, sizeof(scale));
    return p * scale;
}

#endif
