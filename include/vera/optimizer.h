/* optimizer.h: AdamW over the trainable vectors (PyTorch semantics: decoupled weight decay,
 * bias correction), the learning-rate schedule, and clipping by global norm. The optimizer
 * owns the moments; the adapter owns the parameters and gradients it updates. */
#ifndef VERA_OPTIMIZER_H
#define VERA_OPTIMIZER_H

#include <stddef.h>
#include <stdint.h>

#include "vera/backend.h"

typedef struct {
    float lr, min_lr_ratio;
    int32_t warmup_steps, max_steps;
    float beta1, beta2, eps, weight_decay;
    float grad_clip;           /* 0 = no clipping */
} vd_adamw_options;

typedef struct {
    const vd_backend *be;
    vd_adamw_options opt;
    size_t n;
    float *m;                  /* (n) first moment (device) */
    float *v;                  /* (n) second moment (device) */
    int32_t t;                 /* optimizer steps taken (bias-correction exponent) */
} vd_adamw;

void vd_adamw_init(vd_adamw *o, const vd_backend *be, size_t n, const vd_adamw_options *opt);
void vd_adamw_free(vd_adamw *o);
/* Learning rate for 0-based step: linear warmup over warmup_steps ((step+1)/warmup), then
 * cosine from lr down to lr*min_lr_ratio at max_steps. */
float vd_lr_schedule(const vd_adamw_options *opt, int32_t step);
/* One update. Returns the global gradient norm before clipping; clipping scales the gradients
 * by min(1, grad_clip / (norm + 1e-6)) as torch.nn.utils.clip_grad_norm_ does. */
float vd_adamw_step(vd_adamw *o, float *params, const float *grads, float lr);
/* The same over n_ranges ranges of the n values (an adapter's optimizer groups), range i at
 * learning rate lr[i]: one global-norm clip over all n gradients, then AdamW on each range.
 * One range covering everything is vd_adamw_step. */
float vd_adamw_step_ranges(vd_adamw *o, float *params, const float *grads, const size_t *offset, const size_t *count,
                           const float *lr, int32_t n_ranges);

#endif
