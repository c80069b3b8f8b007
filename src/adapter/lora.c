/* lora.c: LoRA as one method of the adapter seam (include/vera/adapter.h), with PEFT's
 * semantics: per adapted layer y = x W0 + bias + s * (dropout(x) A^T) B^T, with lora_A (r x in)
 * and lora_B (out x r) trainable, s = lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora.
 * Init as PEFT: A Kaiming-uniform with a = sqrt(5) (bound 1/sqrt(in)), B = 0; the seed rule is in
 * docs/adapters.md ("LoRA"). */
#include "vera/adapter.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vera/common.h"
#include "vera/peft.h"
#include "vera/prng.h"

/* LoRA's private state (vd_adapter.state). */
typedef struct {
    float scaling;       /* lora_alpha / r, or / sqrt(r) */
    size_t *off_a;       /* (n_modules) offset of lora_A (r, in) in params / grads */
    size_t *off_b;       /* (n_modules) offset of lora_B (out, r) */
    float **XA;          /* (n_modules) of (N, r): dropout(x) A^T of the last forward, kept for backward */
    /* scratch, sized for N = B*T tokens */
    float *xdrop;        /* (N, max_in) dropped adapter input */
    float *tmp_r;        /* (N, r) G B */
} lora_state;

static lora_state *lora_of(const vd_adapter *a) { return (lora_state *)a->state; }

static float lora_scaling(const vd_adapter_options *opt) {
    return opt->use_rslora ? (float)(opt->lora_alpha / sqrt((double)opt->r)) : opt->lora_alpha / (float)opt->r;
}

static void lora_layout(vd_adapter *a) {
    lora_state *s = callocCheck(1, sizeof(lora_state));
    a->state = s;
    s->scaling = lora_scaling(&a->opt);
    s->off_a = callocCheck((size_t)a->n_modules, sizeof(size_t));
    s->off_b = callocCheck((size_t)a->n_modules, sizeof(size_t));
    s->XA = callocCheck((size_t)a->n_modules, sizeof(float *));
    int32_t g = vd_adapter_add_group(a, "default", a->opt.lr);
    char key[192], path[160];
    for (int32_t i = 0; i < a->n_modules; i++) {
        const vd_adapter_module *md = &a->modules[i];
        int64_t sa[2] = {a->opt.r, md->in}, sb[2] = {md->out, a->opt.r};
        snprintf(key, sizeof(key), "base_model.model.%s.lora_A.weight", md->name);
        snprintf(path, sizeof(path), "%s/lora_A", md->name);
        s->off_a[i] = a->n_trainable;
        vd_adapter_add_tensor(a, key, path, i, g, 2, sa);
        snprintf(key, sizeof(key), "base_model.model.%s.lora_B.weight", md->name);
        snprintf(path, sizeof(path), "%s/lora_B", md->name);
        s->off_b[i] = a->n_trainable;
        vd_adapter_add_tensor(a, key, path, i, g, 2, sb);
    }
    a->identity_checksum = 0; /* no frozen state beyond the base model */
}

/* layout's lora_A (r, in) and lora_B (out, r) per module; alloc_acts' XA per module and scratch */
static void lora_size(const vd_adapter_options *opt, const int32_t *in, const int32_t *out, int32_t n_modules,
                      int32_t max_in, int32_t max_out, size_t N, int bf16, vd_adapter_size *sz) {
    (void)max_out;
    (void)bf16;
    size_t r = (size_t)opt->r;
    for (int32_t i = 0; i < n_modules; i++) sz->n_trainable += r * ((size_t)in[i] + (size_t)out[i]);
    sz->state_bytes = sizeof(float) * ((size_t)n_modules * N * r + N * (size_t)max_in + N * r);
    sz->merge_dropout = opt->lora_dropout;
}

/* PEFT's reset_lora_parameters: kaiming_uniform_(lora_A, a=sqrt(5)), lora_B zero. The seed rule:
 * one torch generator seeded with opt.seed draws every module's lora_A in module order. */
static void lora_init_params(const vd_adapter *a, float *hp) {
    const lora_state *s = lora_of(a);
    vd_mt19937 g;
    vd_mt19937_seed(&g, a->opt.seed);
    double neg = sqrt(5.0);
    double gain = sqrt(2.0 / (1.0 + neg * neg));
    for (int32_t i = 0; i < a->n_modules; i++) {
        int32_t in = a->modules[i].in;
        double bound = sqrt(3.0) * (gain / sqrt((double)in)); /* torch: std = gain / sqrt(fan_in) */
        vd_torch_uniform_f32(&g, hp + s->off_a[i], (size_t)a->opt.r * in, -bound, bound);
    }
}

static void lora_alloc_acts(vd_adapter *a, int32_t N, int64_t tokens_per_step, vd_weff_policy policy) {
    const vd_backend *be = a->be;
    lora_state *s = lora_of(a);
    int32_t r = a->opt.r;
    s->xdrop = be->alloc(sizeof(float) * (size_t)N * a->max_in);
    s->tmp_r = be->alloc(sizeof(float) * (size_t)N * r);
    for (int32_t i = 0; i < a->n_modules; i++) s->XA[i] = be->alloc(sizeof(float) * (size_t)N * r);
    vd_adapter_alloc_weffs(a, a->opt.lora_dropout, tokens_per_step, policy);
    vd_adapter_refresh(a);
}

/* weff (in x out) = W0 + s A^T B^T */
static void lora_refresh(vd_adapter *a) {
    const vd_backend *be = a->be;
    lora_state *s = lora_of(a);
    int32_t r = a->opt.r;
    for (int32_t i = 0; i < a->n_modules; i++) {
        vd_adapter_module *md = &a->modules[i];
        if (!md->weff) continue;
        const float *A = a->params + s->off_a[i], *B = a->params + s->off_b[i];
        be->copy(md->weff, md->W0, sizeof(float) * (size_t)md->in * md->out);
        be->gemm(1, 1, md->in, md->out, r, s->scaling, A, md->in, B, r, 1.0f, md->weff, md->out);
    }
}

static void lora_free(vd_adapter *a) {
    const vd_backend *be = a->be;
    lora_state *s = lora_of(a);
    if (!s) return;
    for (int32_t i = 0; i < a->n_modules; i++) {
        if (s->XA[i]) be->free(s->XA[i]);
        if (a->modules[i].weff) be->free(a->modules[i].weff);
        a->modules[i].weff = NULL;
    }
    if (s->xdrop) be->free(s->xdrop);
    if (s->tmp_r) be->free(s->tmp_r);
    free(s->off_a);
    free(s->off_b);
    free(s->XA);
    free(s);
    a->state = NULL;
}

/* After the base GEMM: XA = dropout(x) A^T (kept for dB), then, unless weff holds it,
 * out += s XA B^T. */
static void lora_linear_forward(vd_adapter *a, int32_t module, float *out, const float *inp, int32_t N,
                                const vd_fwd_ctx *ctx) {
    const vd_backend *be = a->be;
    lora_state *s = lora_of(a);
    vd_adapter_module *md = &a->modules[module];
    int32_t r = a->opt.r, in = md->in, outd = md->out;
    const float *A = a->params + s->off_a[module], *B = a->params + s->off_b[module];
    const float *x = vd_adapter_dropped(a, module, s->xdrop, inp, a->opt.lora_dropout, N, ctx);
    be->gemm(0, 1, N, r, in, 1.0f, x, in, A, in, 0.0f, s->XA[module], r);
    if (md->weff) return;
    be->gemm(0, 1, N, outd, r, s->scaling, s->XA[module], r, B, r, 1.0f, out, outd);
}

/* After the base GEMM dinp = G (W0 or weff)^T: dB += s G^T XA; GB = G B; dA += s GB^T dropout(x);
 * on the factored path dinp += mask * (s GB A). */
static void lora_linear_backward(vd_adapter *a, int32_t module, float *dinp, const float *dout, const float *inp,
                                 int32_t N, const vd_fwd_ctx *ctx) {
    const vd_backend *be = a->be;
    lora_state *s = lora_of(a);
    vd_adapter_module *md = &a->modules[module];
    int32_t r = a->opt.r, in = md->in, outd = md->out;
    const float *A = a->params + s->off_a[module], *B = a->params + s->off_b[module];
    float *dA = a->grads + s->off_a[module], *dB = a->grads + s->off_b[module];
    be->gemm(1, 0, outd, r, N, s->scaling, dout, outd, s->XA[module], r, 1.0f, dB, r);
    be->gemm(0, 0, N, r, outd, 1.0f, dout, outd, B, r, 0.0f, s->tmp_r, r);
    const float *x = vd_adapter_dropped(a, module, s->xdrop, inp, a->opt.lora_dropout, N, ctx);
    be->gemm(1, 0, r, in, N, s->scaling, s->tmp_r, r, x, in, 1.0f, dA, in);
    if (md->weff || !dinp) return; /* the adapter path is in weff, or no input gradient is wanted */
    vd_adapter_input_grad(a, module, dinp, s->tmp_r, A, s->scaling, s->xdrop, a->opt.lora_dropout, N, ctx);
}

static void lora_describe(const vd_adapter *a, char *out, size_t cap) {
    snprintf(out, cap, ", lora_alpha %g, scaling %g%s, lora_dropout %g", (double)a->opt.lora_alpha,
             (double)lora_scaling(&a->opt), a->opt.use_rslora ? " (rslora: alpha / sqrt(r))" : " (alpha / r)",
             (double)a->opt.lora_dropout);
}

static void lora_peft_config_write(const vd_adapter *a, cJSON *root, int save_saved) {
    (void)save_saved;
    char text[32];
    vd_format_float_shortest(text, sizeof(text), a->opt.lora_alpha);
    cJSON_AddItemToObject(root, "lora_alpha", cJSON_CreateRaw(text));
    vd_format_float_shortest(text, sizeof(text), a->opt.lora_dropout);
    cJSON_AddItemToObject(root, "lora_dropout", cJSON_CreateRaw(text));
    cJSON_AddBoolToObject(root, "init_lora_weights", 1);
    cJSON_AddBoolToObject(root, "use_rslora", a->opt.use_rslora != 0);
    cJSON_AddBoolToObject(root, "use_dora", 0);
    cJSON_AddObjectToObject(root, "rank_pattern");
    cJSON_AddObjectToObject(root, "alpha_pattern");
}

/* r, lora_alpha (PEFT's default 8), use_rslora; lora_dropout stays 0 (the values come from the
 * file). PEFT features vera-dist does not implement are refused by name. */
static void lora_peft_config_read(const cJSON *root, const char *text, const char *path, vd_adapter_options *opt,
                                  const vd_adapter_options *run) {
    (void)text;
    opt->r = vd_peft_read_rank(root, path, run ? run->r : 0);
    opt->lora_alpha = (float)vd_peft_read_number(root, path, "lora_alpha", 8.0);
    opt->use_rslora = vd_peft_read_bool(root, path, "use_rslora", 0);
    if (vd_peft_read_bool(root, path, "use_dora", 0)) vd_die("%s: use_dora is true (DoRA is not supported)", path);
    const char *patterns[2] = {"rank_pattern", "alpha_pattern"};
    for (int i = 0; i < 2; i++) {
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(root, patterns[i]);
        if (p && !cJSON_IsNull(p) && !(cJSON_IsObject(p) && cJSON_GetArraySize(p) == 0))
            vd_die("%s: %s is not empty (per-layer ranks and alphas are not supported)", path, patterns[i]);
    }
    if (run && opt->lora_alpha != run->lora_alpha)
        vd_die("%s: lora_alpha is %g, this run has lora_alpha = %g", path, (double)opt->lora_alpha, (double)run->lora_alpha);
    if (run && opt->use_rslora != run->use_rslora)
        vd_die("%s: use_rslora is %s, this run has use_rslora = %d", path, opt->use_rslora ? "true" : "false",
               (int)run->use_rslora);
}

const vd_adapter_ops vd_lora_ops = {
    .name = "lora",
    .peft_type = "LORA",
    .trainable_formula = "sum over adapted layers of r * (in + out)",
    .describe = lora_describe,
    .layout = lora_layout,
    .size = lora_size,
    .init_params = lora_init_params,
    .alloc_acts = lora_alloc_acts,
    .refresh = lora_refresh,
    .zero_grads = NULL,
    .linear_forward = lora_linear_forward,
    .linear_backward = lora_linear_backward,
    .free = lora_free,
    .peft_config_write = lora_peft_config_write,
    .peft_config_read = lora_peft_config_read,
    .peft_write_tensors = NULL,
};
