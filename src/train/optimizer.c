/* optimizer.c: AdamW, schedule, clipping. */
#include "vera/optimizer.h"

#include <math.h>
#include <string.h>

#include "vera/common.h"

void vd_adamw_init(vd_adamw *o, const vd_backend *be, size_t n, const vd_adamw_options *opt) {
    memset(o, 0, sizeof(*o));
    o->be = be;
    o->opt = *opt;
    o->n = n;
    o->m = be->alloc(sizeof(float) * n);
    o->v = be->alloc(sizeof(float) * n);
}

void vd_adamw_free(vd_adamw *o) {
    o->be->free(o->m);
    o->be->free(o->v);
    memset(o, 0, sizeof(*o));
}

float vd_lr_schedule(const vd_adamw_options *opt, int32_t step) {
    if (step < opt->warmup_steps) return opt->lr * (float)(step + 1) / (float)opt->warmup_steps;
    int32_t decay = opt->max_steps - opt->warmup_steps;
    if (decay <= 0) return opt->lr;
    double progress = (double)(step - opt->warmup_steps) / (double)decay;
    if (progress > 1.0) progress = 1.0;
    double min_lr = (double)opt->lr * opt->min_lr_ratio;
    return (float)(min_lr + 0.5 * (1.0 + cos(3.14159265358979323846 * progress)) * ((double)opt->lr - min_lr));
}

float vd_adamw_step_ranges(vd_adamw *o, float *params, const float *grads, const size_t *offset, const size_t *count,
                           const float *lr, int32_t n_ranges) {
    double norm = sqrt(o->be->sum_sq(grads, o->n));
    float scale = 1.0f;
    if (o->opt.grad_clip > 0.0f) {
        double coef = (double)o->opt.grad_clip / (norm + 1e-6);
        if (coef < 1.0) scale = (float)coef;
    }
    o->t += 1;
    for (int32_t i = 0; i < n_ranges; i++)
        o->be->adamw(params + offset[i], grads + offset[i], o->m + offset[i], o->v + offset[i], count[i], lr[i],
                     o->opt.beta1, o->opt.beta2, o->opt.eps, o->opt.weight_decay, o->t, scale);
    return (float)norm;
}

float vd_adamw_step(vd_adamw *o, float *params, const float *grads, float lr) {
    size_t offset = 0, count = o->n;
    return vd_adamw_step_ranges(o, params, grads, &offset, &count, &lr, 1);
}
