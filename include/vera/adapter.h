/* adapter.h: VeRA. Owns the shared frozen projections A (r x max_in) and B (max_out x r),
 * the trainable vectors of every adapted layer in ONE contiguous buffer, and the gradient
 * buffer that is all-reduced once per optimizer step. The model calls vd_linear_forward /
 * vd_linear_backward for each of its four linear layers; an adapted one adds
 * y += b * (B[:out] (d * (A[:, :in] x))) as in docs/vera-math (PEFT's definition). */
#ifndef VERA_ADAPTER_H
#define VERA_ADAPTER_H

#include <stddef.h>
#include <stdint.h>

#include "vera/backend.h"
#include "vera/config.h"
#include "vera/model.h"

typedef struct {
    char name[96];      /* HF module path, e.g. "transformer.h.0.attn.c_attn", "model.layers.0.self_attn.q_proj" */
    int32_t layer;      /* block index */
    int32_t kind;       /* index into the family's kind_paths */
    int32_t site;       /* index into the model's site list */
    int32_t in, out;    /* base layer shape (in x out on the backend) */
    size_t off_b;       /* offset of lambda_b (out) in params / grads */
    size_t off_d;       /* offset of lambda_d (r)   in params / grads */
    const float *W0;    /* (in, out) frozen base weight (device), owned by the model, when it is
                         * F32; NULL when BF16 (then weff is never built: the adapter stays
                         * factored rather than merging dW into a bf16 weight) */
    float *U;           /* (N, r) u = A[:, :in] x of the last forward, kept for backward */
    float *weff;        /* (in, out) W0 + dW^T when this module uses the merged backward, else NULL */
} vd_vera_module;

typedef struct {
    int32_t r;
    float d_initial;
    uint64_t key;          /* projection_prng_key */
    uint32_t target_mask;  /* bit k: adapt the family's kind k (vd_model_parse_targets) */
    float dropout;
} vd_vera_options;

typedef enum { VD_WEFF_AUTO = 0, VD_WEFF_ALWAYS, VD_WEFF_NEVER } vd_weff_policy;

typedef struct vd_vera {
    const vd_backend *be;
    const vd_model_family *family; /* the model's: layer names for PEFT I/O */
    char base_model_class[48];     /* HF architecture, e.g. "LlamaForCausalLM" (adapter_config.json) */
    vd_vera_options opt;
    int32_t max_in, max_out;
    int32_t n_modules;
    vd_vera_module *modules;  /* (n_modules) PEFT's order: block by block, kinds in the family's order */
    int32_t n_sites;
    int32_t *module_of;       /* (n_sites) module index of each model site, or -1 */
    size_t n_trainable;       /* sum over modules of (out + r) */
    size_t n_reduce;          /* n_trainable + 2: the loss sum and the stop-request count ride along */
    uint64_t proj_checksum;   /* hash of A and B as generated */
    float *A;                 /* (r, max_in) device */
    float *B;                 /* (max_out, r) device */
    /* bf16 copies of A and B, for the adapter GEMMs when the model's weights are bf16 (the
     * GEMMs then run on bf16 inputs like the base ones; U and the other fp32 operands are
     * rounded as they enter gemm_ex). The vector gradients read the fp32 B. Else NULL. */
    void *A16;                /* (r, max_in) device bf16 */
    void *B16;                /* (max_out, r) device bf16 */
    float *params;            /* (n_trainable) device: [lambda_b, lambda_d] per module */
    float *grads;             /* (n_reduce) device: gradients, then the loss sum, then the number of
                               * ranks that received a stop signal (SIGTERM/SIGUSR1) */
    /* scratch, sized for N = B*T tokens */
    int32_t N;
    float *xdrop;             /* (N, max_in) dropped adapter input */
    float *tmp_r;             /* (N, r) */
    float *tmp_out;           /* (N, max(max_out, max_in)) */
    float *M;                 /* (max_out, r) G^T U */
    float *tmp_w;             /* (max_in, max_out) dW^T while building weff */
    vd_weff_policy weff_policy;
} vd_vera;

/* Lays out one module per targeted site of `m`, draws A and B from opt.key (host, then
 * uploaded), sets b = 0 and d = d_initial, and binds each module to its site's frozen weight.
 * The caller attaches it to the model with vd_model_set_adapter. */
void vd_vera_init(vd_vera *v, const vd_backend *be, const vd_model *m, const vd_vera_options *opt);
/* Allocates per-token buffers for N tokens per micro-batch; tokens_per_step (per rank) decides
 * which modules use the merged input gradient (see docs/architecture.md). */
void vd_vera_alloc_acts(vd_vera *v, int32_t N, int64_t tokens_per_step, vd_weff_policy policy);
/* Must run after params change (each optimizer step): rebuilds the merged weights. */
void vd_vera_refresh(vd_vera *v);
void vd_vera_zero_grads(vd_vera *v);
void vd_vera_free(vd_vera *v);

/* One linear layer of the model, adapted when module >= 0.
 * out (N, outd) = inp (N, in) W (in, outd) + bias (may be NULL) [+ VeRA]. W is F32 or BF16
 * (be->gemm_ex: bf16 inputs, fp32 accumulation); everything else is fp32. */
void vd_linear_forward(vd_vera *v, const vd_backend *be, int32_t module, float *out, const float *inp,
                       const vd_tensor *W, const float *bias, int32_t N, int32_t in, int32_t outd,
                       const vd_fwd_ctx *ctx);
/* dinp (N, in) = dout W^T [+ adapter path]; accumulates lambda_b / lambda_d gradients. */
void vd_linear_backward(vd_vera *v, const vd_backend *be, int32_t module, float *dinp, const float *dout,
                        const vd_tensor *W, int32_t N, int32_t in, int32_t outd, const vd_fwd_ctx *ctx);

/* Seed of module's dropout mask for this forward (the backend draws element (row, col) from it). */
uint64_t vd_vera_dropout_seed(const vd_fwd_ctx *ctx, int32_t module);

#endif
