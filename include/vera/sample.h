/* sample.h: picking the next token from a row of logits (generation). Greedy, or the order of
 * transformers' logits warpers: temperature, then top_k, then top_p, then a draw from the
 * softmax with the project's PRNG (prng.h), so a seed reproduces a sample. */
#ifndef VERA_SAMPLE_H
#define VERA_SAMPLE_H

#include <stdint.h>

#include "vera/prng.h"

typedef struct {
    float temperature; /* 0: greedy (argmax, the first of equal maxima) */
    int32_t top_k;     /* 0: off; else keep the logits >= the k-th largest (ties kept, as TopKLogitsWarper) */
    float top_p;       /* 1: off; else keep the most probable tokens whose probability sums to >= top_p
                        * (TopPLogitsWarper: at least one) */
} vd_sample_options;

typedef struct {
    int32_t V;
    float *work;      /* (V) scaled logits, then probabilities */
    int32_t *order;   /* (V) token ids sorted by logit (top_p) */
    vd_mt19937 rng;
} vd_sampler;

void vd_sampler_init(vd_sampler *s, int32_t V, uint64_t seed);
void vd_sampler_free(vd_sampler *s);
/* The next token from logits (V, not modified). */
int32_t vd_sample_next(vd_sampler *s, const float *logits, const vd_sample_options *o);

#endif
