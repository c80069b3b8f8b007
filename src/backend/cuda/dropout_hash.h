/* dropout_hash.h: the dropout stream of src/backend/cpu.c (vd_dropout_uniform, built on
 * vd_mix64 in src/core/prng.c), as functions that compile for both the host and the GPU.
 *
 * The CUDA backend's dropout kernel calls vd_hd_dropout_apply; tests/gpu/test_gpu_dropout_hash.c
 * compiles this same header as plain C on the host and checks, bit for bit, that it agrees
 * with the CPU backend (which runs everywhere, no GPU needed). Any change to the CPU stream
 * must be made here too; that test fails until it is. Only integer operations and one exact
 * float multiply, so the GPU result is bit-identical to the host one. */
#ifndef VERA_CUDA_DROPOUT_HASH_H
#define VERA_CUDA_DROPOUT_HASH_H

#include <stdint.h>

#ifdef __CUDACC__
#define VD_HD static __host__ __device__ __forceinline__
#else
#define VD_HD static inline
#endif

/* splitmix64's finalizer, exactly vd_mix64 */
VD_HD uint64_t vd_hd_mix64(uint64_t x) {
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

/* exactly vd_dropout_uniform: 24 random bits scaled to [0, 1) (exact in float) */
VD_HD float vd_hd_dropout_uniform(uint64_t seed, uint64_t row, uint64_t col) {
    uint64_t h = vd_hd_mix64(seed ^ vd_hd_mix64(row * 0x9E3779B97F4A7C15ULL + col));
    return (float)(h >> 40) * (1.0f / 16777216.0f);
}

/* one element of the CPU backend's dropout: kept iff u >= p, kept values times keep_scale
 * (the caller computes keep_scale = 1.0f / (1.0f - p) once, on the host, as the CPU does) */
VD_HD float vd_hd_dropout_apply(float x, float p, float keep_scale, uint64_t seed, uint64_t row, uint64_t col) {
    float u = vd_hd_dropout_uniform(seed, row, col);
    return u >= p ? x * keep_scale : 0.0f;
}

#endif
