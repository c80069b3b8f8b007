/* vblora.h: VB-LoRA (Li et al. 2024) with PEFT's VBLoRAConfig semantics. Every adapted layer's
 * low-rank matrices are composed from ONE vector bank shared by all layers: sub-vector s of A
 * (r x in) or B (out x r) is sum_j softmax(top-k logits of s)_j bank[topk index j], and the
 * layer adds y += dropout(x) A^T B^T (PEFT's order). Trainable: the bank and every layer's
 * logits, in one contiguous buffer [bank | logits_A, logits_B of module 0 | ...] so the two
 * optimizer groups (bank, logits) are two ranges; the gradient buffer has the same layout plus
 * the loss sum and the stop-request count, all-reduced once per step. See docs/adapters.md. */
#ifndef VERA_VBLORA_H
#define VERA_VBLORA_H

#include <stddef.h>
#include <stdint.h>

#include "vera/backend.h"
#include "vera/model.h"

typedef struct {
    int32_t r;                    /* rank */
    int32_t num_vectors;          /* bank rows */
    int32_t vector_length;        /* bank columns; divides every adapted layer's in and out */
    int32_t topk;                 /* 1 <= topk <= num_vectors */
    float init_vector_bank_bound; /* bank ~ uniform(-bound, bound) */
    float init_logits_std;        /* logits ~ normal(0, std) */
    float dropout;                /* vblora_dropout, on the adapter input */
    uint32_t target_mask;         /* bit k: adapt the family's kind k (vd_model_parse_targets) */
    uint64_t seed;                /* init stream (torch's MT19937 seeded with it) */
} vd_vblora_options;

typedef struct {
    char name[96];         /* HF module path, e.g. "model.layers.0.self_attn.q_proj" */
    int32_t layer, kind, site;
    int32_t in, out;       /* base layer shape (in x out on the backend) */
    size_t off_la;         /* offset of vblora_logits_A (r, in/L, num_vectors) in params / grads */
    size_t off_lb;         /* offset of vblora_logits_B (out/L, r, num_vectors) in params / grads */
    vd_vblora_shape sa;    /* A's composition shape */
    vd_vblora_shape sb;    /* B's composition shape */
    const float *W0;       /* (in, out) frozen base weight (device), owned by the model */
    float *A;              /* (r, in) composed A (device), rebuilt by vd_vblora_refresh */
    float *B;              /* (out, r) composed B (device) */
    int32_t *idx_a;        /* (r * in/L, topk) top-k bank rows of each A sub-vector */
    float *w_a;            /* (r * in/L, topk) their softmax weights */
    int32_t *idx_b;        /* (out/L * r, topk) */
    float *w_b;            /* (out/L * r, topk) */
    float *X;              /* (N, in) the adapter input of the last forward (after dropout), for dA */
    float *U;              /* (N, r) X A^T of the last forward */
} vd_vblora_module;

typedef struct vd_vblora {
    const vd_backend *be;
    vd_vblora_options opt;
    int32_t n_modules;
    vd_vblora_module *modules; /* (n_modules) PEFT's order: block by block, kinds in the family's order */
    int32_t n_sites;
    int32_t *module_of;        /* (n_sites) module index of each model site, or -1 */
    int32_t max_in, max_out;
    size_t n_bank;             /* num_vectors * vector_length: params[0 .. n_bank) is the bank */
    size_t n_trainable;        /* n_bank + sum over modules of r * (in + out) / L * num_vectors */
    size_t n_reduce;           /* n_trainable + 2 (loss sum, stop-request count) */
    float *params;             /* (n_trainable) device */
    float *grads;              /* (n_reduce) device, same layout */
    /* scratch, sized for N tokens */
    int32_t N;
    float *dU;                 /* (N, r) G B */
    float *dA;                 /* (r, max_in) */
    float *dB;                 /* (max_out, r) */
    float *tmp_in;             /* (N, max_in) the adapter's input gradient before the dropout mask */
} vd_vblora;

/* Checks every targeted site's in and out against vector_length (one-line error naming the
 * layer), lays out the modules and draws the bank and logits from opt->seed. */
void vd_vblora_init(vd_vblora *v, const vd_backend *be, const vd_model *m, const vd_vblora_options *opt);
/* Per-token buffers for N tokens per micro-batch; composes A and B. */
void vd_vblora_alloc_acts(vd_vblora *v, int32_t N);
/* After params change (each optimizer step, a load): top-k, softmax and A, B of every module. */
void vd_vblora_refresh(vd_vblora *v);
void vd_vblora_zero_grads(vd_vblora *v);
void vd_vblora_free(vd_vblora *v);

/* One linear layer, adapted when module >= 0 (see vd_linear_forward in adapter.h):
 * out (N, outd) = inp W + bias (may be NULL) + dropout(inp) A^T B^T. */
void vd_vblora_linear_forward(vd_vblora *v, int32_t module, float *out, const float *inp, const float *W,
                              const float *bias, int32_t N, int32_t in, int32_t outd, const vd_fwd_ctx *ctx);
/* dinp (N, in) = dout W^T + mask * (dout B) A; accumulates the logits and bank gradients of the
 * layer (the bank's over layers in the order the model calls this: fixed, so deterministic). */
void vd_vblora_linear_backward(vd_vblora *v, int32_t module, float *dinp, const float *dout, const float *W,
                               int32_t N, int32_t in, int32_t outd, const vd_fwd_ctx *ctx);

#endif
