/* test_adapter.h: VeRA and VB-LoRA adapters for the C tests, through the generic seam (adapter.h). */
#ifndef VERA_TEST_ADAPTER_H
#define VERA_TEST_ADAPTER_H

#include <string.h>

#include "vera/adapter.h"

/* The options of a VeRA adapter: rank r, lambda_d's start, projection key, target kinds, dropout. */
static inline vd_adapter_options vd_test_vera_options(int32_t r, float d_initial, uint64_t key, uint32_t mask,
                                                      float dropout) {
    vd_adapter_options o;
    memset(&o, 0, sizeof(o));
    o.type = VD_ADAPTER_VERA;
    o.r = r;
    o.d_initial = d_initial;
    o.key = key;
    o.target_mask = mask;
    o.dropout = dropout;
    o.lr = 1e-3f;
    return o;
}

/* The options of a VB-LoRA adapter (all four GPT-2 kinds): rank, bank shape, topk, init, dropout;
 * learning rates 1e-2 (logits) and 1e-3 (bank), init seed 11. */
static inline vd_adapter_options vd_test_vblora_options(int32_t r, int32_t num_vectors, int32_t vector_length,
                                                        int32_t topk, float bound, float std, float dropout) {
    vd_adapter_options o;
    memset(&o, 0, sizeof(o));
    o.type = VD_ADAPTER_VBLORA;
    o.target_mask = 0xF;
    o.r = r;
    o.num_vectors = num_vectors;
    o.vector_length = vector_length;
    o.topk = topk;
    o.init_vector_bank_bound = bound;
    o.init_logits_std = std;
    o.vblora_dropout = dropout;
    o.lr = 1e-2f;
    o.lr_vector_bank = 1e-3f;
    o.seed = 11;
    return o;
}

/* VeRA's table: per module lambda_b then lambda_d; its saved tensors are A then B. */
static inline size_t vd_test_off_b(const vd_adapter *a, int32_t module) { return a->tensors[2 * module].offset; }
static inline size_t vd_test_off_d(const vd_adapter *a, int32_t module) { return a->tensors[2 * module + 1].offset; }
static inline const float *vd_test_vera_A(const vd_adapter *a) { return a->saved[0].data; }
static inline const float *vd_test_vera_B(const vd_adapter *a) { return a->saved[1].data; }

#endif
