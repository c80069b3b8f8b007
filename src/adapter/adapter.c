/* adapter.c: the generic half of the adapter seam (include/vera/adapter.h): the method
 * registry, the module list, the tensor table, optimizer groups, the one params / grads pair,
 * and the linear-layer wrapper every model family calls. A method adds only its math. */
#include "vera/adapter.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vera/common.h"
#include "vera/prng.h"

/* The registry, by vd_adapter_type; NULL = not built into this version. */
static const vd_adapter_ops *const k_adapter_ops[VD_ADAPTER_N_TYPES] = {
    [VD_ADAPTER_VERA] = &vd_vera_ops,
    [VD_ADAPTER_VBLORA] = &vd_vblora_ops,
    [VD_ADAPTER_LORA] = &vd_lora_ops,
};
static const char *const k_adapter_names[VD_ADAPTER_N_TYPES] = {"vera", "vblora", "lora"};

const char *vd_adapter_type_name(vd_adapter_type t) {
    return (t >= 0 && t < VD_ADAPTER_N_TYPES) ? k_adapter_names[t] : "?";
}

int vd_adapter_type_parse(const char *name) {
    for (int t = 0; t < VD_ADAPTER_N_TYPES; t++)
        if (!strcmp(name, k_adapter_names[t])) return t;
    return -1;
}

const vd_adapter_ops *vd_adapter_ops_of(vd_adapter_type t) {
    const vd_adapter_ops *ops = (t >= 0 && t < VD_ADAPTER_N_TYPES) ? k_adapter_ops[t] : NULL;
    if (!ops) vd_die("adapter_type: %s is not available in this build yet", vd_adapter_type_name(t));
    return ops;
}

int vd_adapter_type_of_peft(const char *peft_type) {
    for (int t = 0; t < VD_ADAPTER_N_TYPES; t++)
        if (k_adapter_ops[t] && !strcmp(k_adapter_ops[t]->peft_type, peft_type)) return t;
    return -1;
}

const char *vd_adapter_peft_types(void) {
    static char list[64];
    if (!list[0])
        for (int t = 0; t < VD_ADAPTER_N_TYPES; t++)
            if (k_adapter_ops[t])
                snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s\"%s\"", list[0] ? ", " : "",
                         k_adapter_ops[t]->peft_type);
    return list;
}

void vd_adapter_options_from_config(vd_adapter_options *opt, const vd_config *cfg, uint32_t target_mask) {
    memset(opt, 0, sizeof(*opt));
    int t = vd_adapter_type_parse(cfg->adapter_type);
    if (t < 0) vd_die("adapter_type: '%s' is not one of vera, vblora, lora", cfg->adapter_type);
    opt->type = (vd_adapter_type)t;
    opt->target_mask = target_mask;
    opt->r = cfg->r;
    opt->lr = cfg->lr;
    opt->seed = cfg->seed;
    opt->d_initial = cfg->d_initial;
    opt->key = cfg->projection_prng_key;
    opt->dropout = cfg->vera_dropout;
    opt->lora_alpha = cfg->lora_alpha;
    opt->lora_dropout = cfg->lora_dropout;
    opt->use_rslora = cfg->use_rslora;
    opt->num_vectors = cfg->num_vectors;
    opt->vector_length = cfg->vector_length;
    opt->topk = cfg->topk;
    opt->init_vector_bank_bound = cfg->init_vector_bank_bound;
    opt->init_logits_std = cfg->init_logits_std;
    opt->vblora_dropout = cfg->vblora_dropout;
    opt->lr_vector_bank = cfg->lr_vector_bank;
    opt->save_only_topk_weights = cfg->save_only_topk_weights;
}

void vd_adapter_config_copy(vd_config *dst, const vd_config *src) {
    vd_adapter_options o;
    vd_adapter_options_from_config(&o, src, 0); /* refuses an unknown adapter_type */
    snprintf(dst->adapter_type, sizeof(dst->adapter_type), "%s", src->adapter_type);
    snprintf(dst->target_modules, sizeof(dst->target_modules), "%s", src->target_modules);
    dst->r = src->r;
    dst->d_initial = src->d_initial;
    dst->projection_prng_key = src->projection_prng_key;
    dst->lora_alpha = src->lora_alpha;
    dst->use_rslora = src->use_rslora;
    dst->num_vectors = src->num_vectors;
    dst->vector_length = src->vector_length;
    dst->topk = src->topk;
    dst->init_vector_bank_bound = src->init_vector_bank_bound;
    dst->init_logits_std = src->init_logits_std;
    dst->lr = src->lr;
    dst->lr_vector_bank = src->lr_vector_bank;
    dst->seed = src->seed;
}

int32_t vd_adapter_add_group(vd_adapter *a, const char *name, float lr) {
    if (a->n_groups >= VD_ADAPTER_MAX_GROUPS) vd_die("internal: more than %d optimizer groups", VD_ADAPTER_MAX_GROUPS);
    vd_adapter_group *g = &a->groups[a->n_groups];
    snprintf(g->name, sizeof(g->name), "%s", name);
    g->offset = a->n_trainable;
    g->count = 0;
    g->lr = lr;
    return a->n_groups++;
}

int32_t vd_adapter_add_tensor(vd_adapter *a, const char *peft_key, const char *ckpt_path, int32_t module,
                              int32_t group, int32_t ndim, const int64_t *shape) {
    vd_require(ndim >= 1 && ndim <= VD_ADAPTER_MAX_DIM && group == a->n_groups - 1);
    a->tensors = realloc(a->tensors, sizeof(vd_adapter_tensor) * (size_t)(a->n_tensors + 1));
    if (!a->tensors) vd_die("out of memory for the adapter's tensor table");
    vd_adapter_tensor *t = &a->tensors[a->n_tensors];
    memset(t, 0, sizeof(*t));
    snprintf(t->peft_key, sizeof(t->peft_key), "%s", peft_key);
    snprintf(t->ckpt_path, sizeof(t->ckpt_path), "%s", ckpt_path);
    t->module = module;
    t->group = group;
    t->offset = a->n_trainable;
    t->ndim = ndim;
    t->numel = 1;
    for (int32_t d = 0; d < ndim; d++) {
        vd_require(shape[d] > 0);
        t->shape[d] = shape[d];
        t->numel *= (size_t)shape[d];
    }
    a->n_trainable += t->numel;
    a->groups[group].count += t->numel;
    return a->n_tensors++;
}

void vd_adapter_add_saved(vd_adapter *a, const char *peft_key, const char *ckpt_name, const float *data,
                          int32_t ndim, const int64_t *shape) {
    vd_require(ndim >= 1 && ndim <= VD_ADAPTER_MAX_DIM);
    a->saved = realloc(a->saved, sizeof(vd_adapter_saved) * (size_t)(a->n_saved + 1));
    if (!a->saved) vd_die("out of memory for the adapter's saved tensors");
    vd_adapter_saved *s = &a->saved[a->n_saved++];
    memset(s, 0, sizeof(*s));
    snprintf(s->peft_key, sizeof(s->peft_key), "%s", peft_key);
    snprintf(s->ckpt_name, sizeof(s->ckpt_name), "%s", ckpt_name);
    s->data = data;
    s->ndim = ndim;
    s->numel = 1;
    for (int32_t d = 0; d < ndim; d++) {
        s->shape[d] = shape[d];
        s->numel *= (size_t)shape[d];
    }
}

int32_t vd_adapter_find_tensor(const vd_adapter *a, const char *peft_key) {
    for (int32_t i = 0; i < a->n_tensors; i++)
        if (!strcmp(a->tensors[i].peft_key, peft_key)) return i;
    return -1;
}

void vd_adapter_size_of(const vd_model_config *mc, const vd_adapter_options *opt, size_t N, int bf16,
                        vd_adapter_size *sz, int32_t *n_modules, int32_t *max_in, int32_t *max_out) {
    const vd_model_family *f = vd_model_family_of(mc->arch);
    size_t cap = (size_t)mc->n_layer * (size_t)f->n_kinds;
    int32_t *in = mallocCheck(sizeof(int32_t) * (cap ? cap : 1)), *out = mallocCheck(sizeof(int32_t) * (cap ? cap : 1));
    int32_t n = 0, mi = 0, mo = 0;
    /* vd_adapter_init's order: block by block, kinds in the family's order */
    for (int32_t l = 0; l < mc->n_layer; l++)
        for (int32_t k = 0; k < f->n_kinds; k++) {
            if (!(opt->target_mask & (1u << k))) continue;
            f->kind_shape(mc, k, &in[n], &out[n]);
            if (in[n] > mi) mi = in[n];
            if (out[n] > mo) mo = out[n];
            n++;
        }
    memset(sz, 0, sizeof(*sz));
    vd_adapter_ops_of(opt->type)->size(opt, in, out, n, mi, mo, N, bf16, sz);
    free(in);
    free(out);
    if (n_modules) *n_modules = n;
    if (max_in) *max_in = mi;
    if (max_out) *max_out = mo;
}

size_t vd_adapter_module_trainable(const vd_adapter_options *opt, int32_t in, int32_t out) {
    vd_adapter_size sz;
    memset(&sz, 0, sizeof(sz));
    vd_adapter_ops_of(opt->type)->size(opt, &in, &out, 1, in, out, 1, 0, &sz);
    return sz.n_trainable - sz.n_shared;
}

void vd_adapter_init(vd_adapter *a, const vd_backend *be, const vd_model *m, const vd_adapter_options *opt) {
    memset(a, 0, sizeof(*a));
    a->type = opt->type;
    a->ops = vd_adapter_ops_of(opt->type);
    a->be = be;
    a->opt = *opt;
    if (opt->target_mask == 0) vd_die("target_modules: no layer selected");
    a->family = m->family;
    snprintf(a->base_model_class, sizeof(a->base_model_class), "%s", m->config.hf_architecture);
    a->n_sites = m->n_sites;
    a->wdtype = m->n_sites > 0 ? m->sites[0].W.dtype : VD_DTYPE_F32;
    a->module_of = mallocCheck(sizeof(int32_t) * (size_t)m->n_sites);
    a->modules = callocCheck((size_t)m->n_sites, sizeof(vd_adapter_module));
    /* sites come block by block, kinds in the family's order: PEFT's module order */
    for (int32_t i = 0; i < m->n_sites; i++) {
        const vd_linear_site *s = &m->sites[i];
        a->module_of[i] = -1;
        if (!(opt->target_mask & (1u << s->kind))) continue;
        vd_adapter_module *md = &a->modules[a->n_modules];
        snprintf(md->name, sizeof(md->name), "%s", s->name);
        md->layer = s->layer;
        md->kind = s->kind;
        md->site = i;
        md->in = s->in;
        md->out = s->out;
        md->W0 = s->W.dtype == VD_DTYPE_F32 ? vd_tensor_f32(&s->W) : NULL; /* bf16: never merged */
        if (md->in > a->max_in) a->max_in = md->in;
        if (md->out > a->max_out) a->max_out = md->out;
        a->module_of[i] = a->n_modules++;
    }
    a->ops->layout(a);
    vd_require(a->n_groups >= 1 && a->n_trainable > 0);
    {   /* inspect and the memory pre-check count with ops->size: it must agree with the layout */
        vd_adapter_size sz;
        vd_adapter_size_of(&m->config, opt, 1, 0, &sz, NULL, NULL, NULL);
        vd_require(sz.n_trainable == a->n_trainable);
    }
    a->n_reduce = a->n_trainable + 2; /* + loss sum + stop-request count */
    float *hp = callocCheck(a->n_trainable, sizeof(float));
    a->ops->init_params(a, hp);
    a->params = be->alloc(sizeof(float) * a->n_trainable);
    a->grads = be->alloc(sizeof(float) * a->n_reduce);
    be->to_device(a->params, hp, sizeof(float) * a->n_trainable);
    free(hp);
}

void vd_adapter_alloc_acts(vd_adapter *a, int32_t N, int64_t tokens_per_step, vd_weff_policy policy) {
    a->N = N;
    /* bf16 base weights: the factored path everywhere */
    if (a->wdtype == VD_DTYPE_BF16) policy = VD_WEFF_NEVER;
    a->ops->alloc_acts(a, N, tokens_per_step, policy);
}

int vd_adapter_merge_pays(float dropout, int64_t tokens_per_step, vd_weff_policy policy, int32_t in, int32_t out) {
    /* the merged input gradient G (W0 + dW)^T costs 2*in*out*r once per step to form and saves
     * 2*r*(in+out) per token; dropout breaks it (the mask sits inside the sum) */
    if (policy == VD_WEFF_INFERENCE) return 1;
    if (dropout != 0.0f || policy == VD_WEFF_NEVER) return 0;
    return policy == VD_WEFF_ALWAYS || (double)tokens_per_step * (in + out) > (double)in * out;
}

int vd_adapter_alloc_weffs(vd_adapter *a, float dropout, int64_t tokens_per_step, vd_weff_policy policy) {
    int any = 0;
    for (int32_t i = 0; i < a->n_modules; i++) {
        vd_adapter_module *md = &a->modules[i];
        if (!vd_adapter_merge_pays(dropout, tokens_per_step, policy, md->in, md->out)) continue;
        md->weff = a->be->alloc(sizeof(float) * (size_t)md->in * md->out);
        any = 1;
    }
    return any;
}

const float *vd_adapter_dropped(vd_adapter *a, int32_t module, float *scratch, const float *x, float p, int32_t N,
                               const vd_fwd_ctx *ctx) {
    if (!(p > 0.0f && ctx->training)) return x;
    a->be->dropout(scratch, x, N, a->modules[module].in, p, vd_adapter_dropout_seed(ctx, module), ctx->row0);
    return scratch;
}

void vd_adapter_input_grad(vd_adapter *a, int32_t module, float *dinp, const float *dU, const float *A, float scale,
                           float *scratch, float p, int32_t N, const vd_fwd_ctx *ctx) {
    const vd_backend *be = a->be;
    int32_t r = a->opt.r, in = a->modules[module].in;
    if (p > 0.0f && ctx->training) {
        be->gemm(0, 0, N, in, r, scale, dU, r, A, in, 0.0f, scratch, in);
        be->dropout(scratch, scratch, N, in, p, vd_adapter_dropout_seed(ctx, module), ctx->row0);
        be->accumulate(dinp, scratch, (size_t)N * in);
    } else {
        be->gemm(0, 0, N, in, r, scale, dU, r, A, in, 1.0f, dinp, in);
    }
}

void vd_adapter_refresh(vd_adapter *a) { a->ops->refresh(a); }

void vd_adapter_check_trainable(const vd_adapter *a) {
    if (a->ops->check_trainable) a->ops->check_trainable(a);
}

void vd_adapter_zero_grads(vd_adapter *a) {
    if (a->ops->zero_grads) a->ops->zero_grads(a);
    else a->be->zero(a->grads, sizeof(float) * a->n_reduce);
}

void vd_adapter_free(vd_adapter *a) {
    if (a->ops) a->ops->free(a);
    if (a->params) a->be->free(a->params);
    if (a->grads) a->be->free(a->grads);
    free(a->modules);
    free(a->module_of);
    free(a->tensors);
    free(a->saved);
    memset(a, 0, sizeof(*a));
}

/* Per-module dropout stream: the mask depends on (seed, step, module, global row, column). */
uint64_t vd_adapter_dropout_seed(const vd_fwd_ctx *ctx, int32_t module) {
    return vd_mix64(ctx->dropout_seed ^ vd_mix64(0x5eed0000ULL + (uint64_t)module));
}

void vd_linear_forward(vd_adapter *a, const vd_backend *be, int32_t module, float *out, const float *inp,
                       const vd_tensor *W, const float *bias, int32_t N, int32_t in, int32_t outd,
                       const vd_fwd_ctx *ctx) {
    vd_adapter_module *md = module >= 0 ? &a->modules[module] : NULL;
    /* with a merged weight (fp32 only) the adapter term is already inside W0 + dW */
    if (md && md->weff) be->gemm(0, 0, N, outd, in, 1.0f, inp, in, md->weff, outd, 0.0f, out, outd);
    else be->gemm_ex(0, 0, N, outd, in, 1.0f, inp, VD_DTYPE_F32, in, W->data, W->dtype, outd, 0.0f, out, outd);
    if (bias) be->add_bias(out, bias, N, outd);
    if (md) a->ops->linear_forward(a, module, out, inp, N, ctx);
}

void vd_linear_backward(vd_adapter *a, const vd_backend *be, int32_t module, float *dinp, const float *dout,
                        const float *inp, const vd_tensor *W, int32_t N, int32_t in, int32_t outd,
                        const vd_fwd_ctx *ctx) {
    vd_adapter_module *md = module >= 0 ? &a->modules[module] : NULL;
    if (a) {
        if (!a->share_input) a->input_epoch++;
        a->share_input = 0;
    }
    if (!dinp) { /* no input gradient: the module's gradients only */
        if (md) a->ops->linear_backward(a, module, NULL, dout, inp, N, ctx);
        return;
    }
    if (md && md->weff) be->gemm(0, 1, N, in, outd, 1.0f, dout, outd, md->weff, outd, 0.0f, dinp, in);
    else be->gemm_ex(0, 1, N, in, outd, 1.0f, dout, VD_DTYPE_F32, outd, W->data, W->dtype, outd, 0.0f, dinp, in);
    if (md) a->ops->linear_backward(a, module, dinp, dout, inp, N, ctx);
}

void vd_adapter_share_input(vd_adapter *a) {
    if (a) a->share_input = 1;
}
