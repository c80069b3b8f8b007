/* prng.h: torch's CPU generator (MT19937) and its float uniform_ stream, so projections
 * regenerated from projection_prng_key equal PEFT's vera_A / vera_B bit for bit. */
#ifndef VERA_PRNG_H
#define VERA_PRNG_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint32_t state[624];
    int32_t next;   /* index of the next word in state; 624 = regenerate */
} vd_mt19937;

/* torch.Generator().manual_seed(seed) */
void vd_mt19937_seed(vd_mt19937 *g, uint64_t seed);
uint32_t vd_mt19937_next(vd_mt19937 *g);
/* tensor.uniform_(from, to, generator=g) on a float32 CPU tensor of n elements. */
void vd_torch_uniform_f32(vd_mt19937 *g, float *out, size_t n, double from, double to);
/* PEFT's order: A (r x max_in, row-major) then B (max_out x r) from one generator seeded
 * with key; each Kaiming-uniform, gain sqrt(2), fan = shape[1]. */
void vd_vera_projections(uint64_t key, int32_t r, int32_t max_in, int32_t max_out, float *A, float *B);
/* A standard normal from g (Box-Muller over two 24-bit uniforms); for init-model only. */
float vd_mt19937_normal(vd_mt19937 *g);

/* Counter-based 64-bit mixer (splitmix64): stateless streams for dropout masks, so a mask
 * depends only on (seed, step, position), never on the world size or call order. */
uint64_t vd_mix64(uint64_t x);

#endif
