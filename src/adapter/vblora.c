/* vblora.c: VB-LoRA (Li et al. 2024) as one method of the adapter seam (include/vera/adapter.h),
 * with PEFT's VBLoRAConfig semantics. Every adapted layer's A (r x in) and B (out x r) are
 * composed from ONE vector bank (num_vectors x vector_length) shared by all layers: sub-vector
 * s of A or B is sum_j softmax(top-k of logits[s])_j bank[index j], and the layer adds
 * y += dropout(x) A^T B^T (PEFT's order). Trainable: the bank (optimizer group "vector_bank",
 * lr_vector_bank) and every layer's vblora_logits_A (r, in/L, num_vectors) and vblora_logits_B
 * (out/L, r, num_vectors) (group "logits", lr). The admixture is three backend ops
 * (vblora_topk, vblora_compose, vblora_compose_backward); docs/adapters.md ("VB-LoRA"). */
#include "vera/adapter.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vera/common.h"
#include "vera/peft.h"
#include "vera/prng.h"
#include "vera/safetensors.h"

/* One module's derived state: the top-k selection and the composed matrices. */
typedef struct {
    vd_vblora_shape sa;  /* A's composition: n_outer = r, n_inner = in / L, A[i, t*L + l] */
    vd_vblora_shape sb;  /* B's: n_outer = out / L, n_inner = r, B[t*L + l, j] */
    size_t off_la;       /* offset of vblora_logits_A (r, in/L, num_vectors) in params / grads */
    size_t off_lb;       /* offset of vblora_logits_B (out/L, r, num_vectors) */
    float *A;            /* (r, in) composed (device), rebuilt by refresh */
    float *B;            /* (out, r) composed (device) */
    int32_t *idx_a;      /* (r * in/L, topk) bank rows selected for each A sub-vector (device) */
    float *w_a;          /* (r * in/L, topk) their softmax weights (device) */
    int32_t *idx_b;      /* (out/L * r, topk) */
    float *w_b;          /* (out/L * r, topk) */
    float *U;            /* (N, r) dropout(x) A^T of the last forward (device) */
} vblora_module;

/* VB-LoRA's private state (vd_adapter.state). */
typedef struct {
    vblora_module *m;    /* (n_modules) */
    size_t off_bank;     /* offset of vblora_vector_bank (num_vectors, vector_length): 0 */
    /* scratch, sized for N = B*T tokens */
    float *xdrop;        /* (N, max_in) dropped adapter input, then the input gradient before the mask */
    float *dU;           /* (N, r) G B */
    float *dA;           /* (r, max_in) dU^T dropout(x) */
    float *dB;           /* (max_out, r) G^T U */
    /* "" or the file of a save_only_topk_weights import: such logits are -inf outside the top-k
     * (no gradient can revive them), so training is refused, as PEFT refuses it */
    char topk_only_path[VD_PATH_MAX];
} vblora_state;

static vblora_state *vblora_of(const vd_adapter *a) { return (vblora_state *)a->state; }

static size_t shape_rows(const vd_vblora_shape *s) { return (size_t)s->n_outer * s->n_inner; }

static void vblora_check_options(const vd_adapter_options *o) {
    if (o->r <= 0) vd_die("vblora: r must be a positive integer, got %d", o->r);
    if (o->num_vectors <= 0) vd_die("vblora: num_vectors must be a positive integer, got %d", o->num_vectors);
    if (o->vector_length <= 0) vd_die("vblora: vector_length must be a positive integer, got %d", o->vector_length);
    if (o->topk <= 0 || o->topk > o->num_vectors)
        vd_die("vblora: topk must be in 1..num_vectors (%d), got %d", o->num_vectors, o->topk);
    if (!(o->vblora_dropout >= 0.0f && o->vblora_dropout < 1.0f))
        vd_die("vblora: vblora_dropout must be in [0, 1), got %g", (double)o->vblora_dropout);
}

static void vblora_layout(vd_adapter *a) {
    const vd_adapter_options *o = &a->opt;
    vblora_check_options(o);
    const int32_t r = o->r, L = o->vector_length, nv = o->num_vectors;
    vblora_state *s = callocCheck(1, sizeof(vblora_state));
    a->state = s;
    s->m = callocCheck((size_t)a->n_modules, sizeof(vblora_module));
    /* the bank first, in its own group: the two groups are two ranges of params */
    int32_t gb = vd_adapter_add_group(a, "vector_bank", o->lr_vector_bank > 0.0f ? o->lr_vector_bank : o->lr);
    int64_t sbank[2] = {nv, L};
    s->off_bank = a->n_trainable;
    vd_adapter_add_tensor(a, "base_model.vblora_vector_bank", "vector_bank", -1, gb, 2, sbank);
    int32_t gl = vd_adapter_add_group(a, "logits", o->lr);
    char key[192], path[160];
    for (int32_t i = 0; i < a->n_modules; i++) {
        const vd_adapter_module *md = &a->modules[i];
        vblora_module *vm = &s->m[i];
        /* PEFT refuses the same (VBLoRALayer.update_layer) */
        if (md->in % L != 0)
            vd_die("vblora: layer %s: in_features %d is not divisible by vector_length %d", md->name, md->in, L);
        if (md->out % L != 0)
            vd_die("vblora: layer %s: out_features %d is not divisible by vector_length %d", md->name, md->out, L);
        vm->sa = (vd_vblora_shape){r, md->in / L, L, nv, o->topk, md->in, L, 1};
        vm->sb = (vd_vblora_shape){md->out / L, r, L, nv, o->topk, L * r, 1, r};
        int64_t sa[3] = {r, md->in / L, nv}, sb[3] = {md->out / L, r, nv};
        snprintf(key, sizeof(key), "base_model.model.%s.vblora_logits_A", md->name);
        snprintf(path, sizeof(path), "%s/logits_A", md->name);
        vm->off_la = a->n_trainable;
        vd_adapter_add_tensor(a, key, path, i, gl, 3, sa);
        snprintf(key, sizeof(key), "base_model.model.%s.vblora_logits_B", md->name);
        snprintf(path, sizeof(path), "%s/logits_B", md->name);
        vm->off_lb = a->n_trainable;
        vd_adapter_add_tensor(a, key, path, i, gl, 3, sb);
    }
    a->identity_checksum = 0; /* nothing frozen beyond the base model */
    /* the derived state refresh rebuilds: sized now so refresh works before alloc_acts */
    const vd_backend *be = a->be;
    for (int32_t i = 0; i < a->n_modules; i++) {
        vblora_module *vm = &s->m[i];
        size_t ra = shape_rows(&vm->sa) * (size_t)o->topk, rb = shape_rows(&vm->sb) * (size_t)o->topk;
        vm->A = be->alloc(sizeof(float) * (size_t)r * a->modules[i].in);
        vm->B = be->alloc(sizeof(float) * (size_t)a->modules[i].out * r);
        vm->idx_a = be->alloc(sizeof(int32_t) * ra);
        vm->w_a = be->alloc(sizeof(float) * ra);
        vm->idx_b = be->alloc(sizeof(int32_t) * rb);
        vm->w_b = be->alloc(sizeof(float) * rb);
    }
}

/* layout's bank (num_vectors, vector_length) and per module logits_A (r, in / L, nv), logits_B
 * (out / L, r, nv), the composed A (r, in), B (out, r) with their top-k indices and weights;
 * alloc_acts' U per module and scratch */
static void vblora_size(const vd_adapter_options *opt, const int32_t *in, const int32_t *out, int32_t n_modules,
                        int32_t max_in, int32_t max_out, size_t N, int bf16, vd_adapter_size *sz) {
    (void)bf16;
    vblora_check_options(opt);
    size_t r = (size_t)opt->r, nv = (size_t)opt->num_vectors, L = (size_t)opt->vector_length;
    size_t k = (size_t)opt->topk;
    sz->n_shared = nv * L;
    sz->n_trainable = sz->n_shared;
    size_t derived = 0;
    for (int32_t i = 0; i < n_modules; i++) {
        if ((size_t)in[i] % L || (size_t)out[i] % L) /* layout names the layer */
            vd_die("vblora: a layer of shape %d x %d is not divisible by vector_length %d", in[i], out[i], (int)L);
        size_t rows = r * ((size_t)in[i] / L) + ((size_t)out[i] / L) * r;
        sz->n_trainable += rows * nv;
        derived += sizeof(float) * r * ((size_t)in[i] + (size_t)out[i]) + (sizeof(int32_t) + sizeof(float)) * rows * k;
    }
    sz->state_bytes = derived + sizeof(float) * ((size_t)n_modules * N * r + N * (size_t)max_in + N * r +
                                                 r * (size_t)max_in + (size_t)max_out * r);
    sz->merge_dropout = opt->vblora_dropout;
    snprintf(sz->shared, sizeof(sz->shared), "shared vector bank: %d x %d (top-%d of %d vectors per sub-vector)",
             (int)nv, (int)L, (int)k, (int)nv);
}

/* PEFT's distributions: bank ~ uniform(-bound, bound), logits ~ normal(0, std). The seed rule:
 * one torch generator seeded with opt.seed draws the bank (torch's uniform_ stream), then every
 * logit in params order (module by module, A before B; Box-Muller normals). PEFT draws its bank
 * once per adapted layer and keeps the last one; vera-dist does not reproduce PEFT's streams
 * (interop goes through files: an adapter PEFT initialised trains here from its file). */
static void vblora_init_params(const vd_adapter *a, float *hp) {
    const vblora_state *s = vblora_of(a);
    const vd_adapter_options *o = &a->opt;
    size_t n_bank = (size_t)o->num_vectors * o->vector_length;
    vd_mt19937 g;
    vd_mt19937_seed(&g, a->opt.seed);
    vd_torch_uniform_f32(&g, hp + s->off_bank, n_bank, -(double)o->init_vector_bank_bound,
                         (double)o->init_vector_bank_bound);
    for (size_t i = s->off_bank + n_bank; i < a->n_trainable; i++) hp[i] = vd_mt19937_normal(&g) * o->init_logits_std;
}

static void vblora_alloc_acts(vd_adapter *a, int32_t N, int64_t tokens_per_step, vd_weff_policy policy) {
    const vd_backend *be = a->be;
    vblora_state *s = vblora_of(a);
    int32_t r = a->opt.r;
    for (int32_t i = 0; i < a->n_modules; i++) s->m[i].U = be->alloc(sizeof(float) * (size_t)N * r);
    s->xdrop = be->alloc(sizeof(float) * (size_t)N * a->max_in);
    s->dU = be->alloc(sizeof(float) * (size_t)N * r);
    s->dA = be->alloc(sizeof(float) * (size_t)r * a->max_in);
    s->dB = be->alloc(sizeof(float) * (size_t)a->max_out * r);
    vd_adapter_alloc_weffs(a, a->opt.vblora_dropout, tokens_per_step, policy);
    vd_adapter_refresh(a);
}

/* top-k, softmax and composition of every module's A and B from the current params; then
 * weff = W0 + A^T B^T where a module has one */
static void vblora_refresh(vd_adapter *a) {
    const vd_backend *be = a->be;
    vblora_state *s = vblora_of(a);
    const float *bank = a->params + s->off_bank;
    for (int32_t i = 0; i < a->n_modules; i++) {
        vblora_module *vm = &s->m[i];
        be->vblora_topk(vm->idx_a, vm->w_a, a->params + vm->off_la, (int)shape_rows(&vm->sa), vm->sa.nv, vm->sa.k);
        be->vblora_topk(vm->idx_b, vm->w_b, a->params + vm->off_lb, (int)shape_rows(&vm->sb), vm->sb.nv, vm->sb.k);
        be->vblora_compose(vm->A, bank, vm->idx_a, vm->w_a, &vm->sa);
        be->vblora_compose(vm->B, bank, vm->idx_b, vm->w_b, &vm->sb);
        vd_adapter_module *md = &a->modules[i];
        if (!md->weff) continue;
        be->copy(md->weff, md->W0, sizeof(float) * (size_t)md->in * md->out);
        be->gemm(1, 1, md->in, md->out, a->opt.r, 1.0f, vm->A, md->in, vm->B, a->opt.r, 1.0f, md->weff, md->out);
    }
}

static void vblora_free(vd_adapter *a) {
    const vd_backend *be = a->be;
    vblora_state *s = vblora_of(a);
    if (!s) return;
    for (int32_t i = 0; i < a->n_modules; i++) {
        vblora_module *vm = &s->m[i];
        void *bufs[] = {vm->A, vm->B, vm->idx_a, vm->w_a, vm->idx_b, vm->w_b, vm->U, a->modules[i].weff};
        for (size_t j = 0; j < sizeof(bufs) / sizeof(bufs[0]); j++)
            if (bufs[j]) be->free(bufs[j]);
        a->modules[i].weff = NULL;
    }
    void *bufs[] = {s->xdrop, s->dU, s->dA, s->dB};
    for (size_t j = 0; j < sizeof(bufs) / sizeof(bufs[0]); j++)
        if (bufs[j]) be->free(bufs[j]);
    free(s->m);
    free(s);
    a->state = NULL;
}

/* PEFT refuses the same (its forward finds -inf logits in training mode) */
static void vblora_refuse_topk_only(const vd_adapter *a) {
    const vblora_state *s = vblora_of(a);
    if (s->topk_only_path[0])
        vd_die("%s: a save_only_topk_weights export is for merging and inference only; it cannot be trained or "
               "resumed (HINT: export without save_only_topk_weights to keep training)", s->topk_only_path);
}

/* After the base GEMM: U = dropout(x) A^T (kept for dB), then, unless weff holds it, out += U B^T
 * (PEFT: result + F.linear(F.linear(dropout(x), A), B)) */
static void vblora_linear_forward(vd_adapter *a, int32_t module, float *out, const float *inp, int32_t N,
                                  const vd_fwd_ctx *ctx) {
    const vd_backend *be = a->be;
    vblora_state *s = vblora_of(a);
    if (ctx->training) vblora_refuse_topk_only(a); /* train.c refuses at load already (check_trainable) */
    vblora_module *vm = &s->m[module];
    const vd_adapter_module *md = &a->modules[module];
    int32_t r = a->opt.r;
    const float *x = vd_adapter_dropped(a, module, s->xdrop, inp, a->opt.vblora_dropout, N, ctx);
    be->gemm(0, 1, N, r, md->in, 1.0f, x, md->in, vm->A, md->in, 0.0f, vm->U, r);
    if (md->weff) return;
    be->gemm(0, 1, N, md->out, r, 1.0f, vm->U, r, vm->B, r, 1.0f, out, md->out);
}

/* After the base GEMM dinp = G W0^T: dB = G^T U, dU = G B, dA = dU^T dropout(x), then through the
 * top-k admixture into the module's logits and the shared bank (summed over modules in the
 * order the model calls backward: fixed, so deterministic), and, unless the base GEMM used
 * weff, dinp += mask * (dU A). */
static void vblora_linear_backward(vd_adapter *a, int32_t module, float *dinp, const float *dout,
                                   const float *inp, int32_t N, const vd_fwd_ctx *ctx) {
    const vd_backend *be = a->be;
    vblora_state *s = vblora_of(a);
    vblora_module *vm = &s->m[module];
    const vd_adapter_module *md = &a->modules[module];
    int32_t r = a->opt.r, in = md->in, outd = md->out;
    be->gemm(1, 0, outd, r, N, 1.0f, dout, outd, vm->U, r, 0.0f, s->dB, r);
    be->gemm(0, 0, N, r, outd, 1.0f, dout, outd, vm->B, r, 0.0f, s->dU, r);
    const float *x = vd_adapter_dropped(a, module, s->xdrop, inp, a->opt.vblora_dropout, N, ctx);
    be->gemm(1, 0, r, in, N, 1.0f, s->dU, r, x, in, 0.0f, s->dA, in);
    const float *bank = a->params + s->off_bank;
    float *dbank = a->grads + s->off_bank;
    be->vblora_compose_backward(a->grads + vm->off_la, dbank, s->dA, bank, vm->idx_a, vm->w_a, &vm->sa);
    be->vblora_compose_backward(a->grads + vm->off_lb, dbank, s->dB, bank, vm->idx_b, vm->w_b, &vm->sb);
    if (md->weff || !dinp) return; /* the base GEMM used W0 + A^T B^T, or no input gradient wanted */
    vd_adapter_input_grad(a, module, dinp, s->dU, vm->A, 1.0f, s->xdrop, a->opt.vblora_dropout, N, ctx);
}

static void vblora_describe(const vd_adapter *a, char *out, size_t cap) {
    const vd_adapter_options *o = &a->opt;
    snprintf(out, cap, ", bank %dx%d, topk %d, vblora_dropout %g, lr %g (logits) / %g (bank)", o->num_vectors,
             o->vector_length, o->topk, (double)o->vblora_dropout, (double)o->lr,
             (double)(o->lr_vector_bank > 0.0f ? o->lr_vector_bank : o->lr));
}

/* ---- PEFT I/O ---- */

static void vblora_peft_config_write(const vd_adapter *a, cJSON *root, int save_saved) {
    (void)save_saved;
    const vd_adapter_options *o = &a->opt;
    char text[32];
    cJSON_AddNumberToObject(root, "num_vectors", o->num_vectors);
    cJSON_AddNumberToObject(root, "vector_length", o->vector_length);
    cJSON_AddNumberToObject(root, "topk", o->topk);
    vd_format_float_shortest(text, sizeof(text), o->vblora_dropout);
    cJSON_AddItemToObject(root, "vblora_dropout", cJSON_CreateRaw(text));
    vd_format_float_shortest(text, sizeof(text), o->init_vector_bank_bound);
    cJSON_AddItemToObject(root, "init_vector_bank_bound", cJSON_CreateRaw(text));
    vd_format_float_shortest(text, sizeof(text), o->init_logits_std);
    cJSON_AddItemToObject(root, "init_logits_std", cJSON_CreateRaw(text));
    cJSON_AddBoolToObject(root, "save_only_topk_weights", o->save_only_topk_weights != 0);
}

static int32_t vblora_read_int(const cJSON *root, const char *path, const char *field, int32_t def) {
    double v = vd_peft_read_number(root, path, field, (double)def);
    if (v < 1 || v > 2147483647.0 || v != (double)(int32_t)v) vd_die("%s: %s is not a positive integer", path, field);
    return (int32_t)v;
}

/* The fields that shape the tensors must equal the run's; the init fields are kept (they
 * describe how the file's values were drawn); dropout comes from the run (PEFT's too is a
 * training setting, not part of the weights). */
static void vblora_peft_config_read(const cJSON *root, const char *text, const char *path, vd_adapter_options *opt,
                                    const vd_adapter_options *run) {
    (void)text;
    opt->r = vd_peft_read_rank(root, path, run ? run->r : 0);
    opt->num_vectors = vblora_read_int(root, path, "num_vectors", 256);
    opt->vector_length = vblora_read_int(root, path, "vector_length", 256);
    opt->topk = vblora_read_int(root, path, "topk", 2);
    opt->init_vector_bank_bound = (float)vd_peft_read_number(root, path, "init_vector_bank_bound", 0.02);
    opt->init_logits_std = (float)vd_peft_read_number(root, path, "init_logits_std", 0.1);
    opt->save_only_topk_weights = vd_peft_read_bool(root, path, "save_only_topk_weights", 0);
    if (opt->topk > opt->num_vectors) vd_die("%s: topk %d exceeds num_vectors %d", path, opt->topk, opt->num_vectors);
    if (run) {
        const struct { const char *name; int32_t file, ours; } f[3] = {
            {"num_vectors", opt->num_vectors, run->num_vectors},
            {"vector_length", opt->vector_length, run->vector_length},
            {"topk", opt->topk, run->topk}};
        for (int i = 0; i < 3; i++)
            if (f[i].file != f[i].ours) vd_die("%s: %s is %d, this run has %s = %d", path, f[i].name, f[i].file, f[i].name, f[i].ours);
    }
}

/* PEFT's index dtype for a bank of nv rows (VBLoRAModel._get_adapter_state_dict) */
static const char *vblora_index_dtype(int32_t nv, size_t *size) {
    if (nv < (1 << 8)) { *size = 1; return "U8"; }
    if (nv < (1 << 15)) { *size = 2; return "I16"; }
    *size = 4;
    return "I32";
}

/* save_only_topk_weights: per logits tensor, <key>_topk_indices (..., topk) in the smallest
 * integer type and <key>_topk_weights (..., topk - 1), the softmax of the top-k values without
 * its last column (it is 1 minus the others); the bank as is. Others: the table (return 0). */
static int vblora_peft_write_tensors(const vd_adapter *a, const float *hp, const char *path, int save_saved,
                                     const char *const *meta_kv, int32_t n_meta) {
    (void)save_saved;
    if (!a->opt.save_only_topk_weights) return 0;
    const int32_t k = a->opt.topk, nv = a->opt.num_vectors;
    const vd_backend *host = vd_backend_cpu(); /* the reference top-k, on host memory */
    size_t isz;
    const char *idt = vblora_index_dtype(nv, &isz);
    int32_t n = 1 + 2 * (a->n_tensors - 1), e_n = 0;
    vd_st_entry *e = callocCheck((size_t)n, sizeof(vd_st_entry));
    char (*names)[224] = callocCheck((size_t)n, sizeof(*names));
    void **bufs = callocCheck((size_t)n, sizeof(void *));
    for (int32_t i = 0; i < a->n_tensors; i++) {
        const vd_adapter_tensor *t = &a->tensors[i];
        if (t->module < 0) { /* the bank */
            e[e_n] = (vd_st_entry){t->peft_key, hp + t->offset, t->ndim, {t->shape[0], t->shape[1]}, NULL, NULL};
            e_n++;
            continue;
        }
        size_t rows = t->numel / (size_t)nv;
        int32_t *idx = mallocCheck(sizeof(int32_t) * rows * (size_t)k);
        float *w = mallocCheck(sizeof(float) * rows * (size_t)k);
        host->vblora_topk(idx, w, hp + t->offset, (int)rows, nv, k);
        uint8_t *ib = mallocCheck(isz * rows * (size_t)k);
        for (size_t j = 0; j < rows * (size_t)k; j++) {
            if (isz == 1) ib[j] = (uint8_t)idx[j];
            else if (isz == 2) { int16_t v = (int16_t)idx[j]; memcpy(ib + 2 * j, &v, 2); }
            else memcpy(ib + 4 * j, &idx[j], 4);
        }
        float *wk = mallocCheck(sizeof(float) * (rows * (size_t)(k - 1) + 1));
        for (size_t rr = 0; rr < rows; rr++)
            for (int32_t j = 0; j < k - 1; j++) wk[rr * (size_t)(k - 1) + j] = w[rr * (size_t)k + j];
        free(idx);
        free(w);
        snprintf(names[e_n], sizeof(names[0]), "%s_topk_indices", t->peft_key);
        e[e_n] = (vd_st_entry){names[e_n], NULL, 3, {t->shape[0], t->shape[1], k}, idt, ib};
        bufs[e_n++] = ib;
        snprintf(names[e_n], sizeof(names[0]), "%s_topk_weights", t->peft_key);
        e[e_n] = (vd_st_entry){names[e_n], wk, 3, {t->shape[0], t->shape[1], k - 1}, NULL, NULL};
        bufs[e_n++] = wk;
    }
    vd_safetensors_write_f32(path, e, e_n, meta_kv, n_meta);
    for (int32_t i = 0; i < e_n; i++) free(bufs[i]);
    free(bufs);
    free(names);
    free(e);
    return 1;
}

/* A save_only_topk_weights file back into logits as PEFT rebuilds them
 * (VBLoRAModel._remap_adapter_state_dict_for_load): log of the k weights (the last one 1 minus
 * the others) at their indices, -inf elsewhere. Returns 0 for a file of full logits (the table
 * reads it). Marks the adapter inference-only. */
static int vblora_peft_read_tensors(vd_adapter *a, const vd_safetensors *st, float *hp) {
    const int32_t k = a->opt.topk, nv = a->opt.num_vectors;
    char name[224];
    int topk_form = 0;
    for (int32_t i = 0; i < a->n_tensors && !topk_form; i++) {
        snprintf(name, sizeof(name), "%s_topk_indices", a->tensors[i].peft_key);
        topk_form = vd_safetensors_find(st, name) != NULL;
    }
    vblora_of(a)->topk_only_path[0] = '\0';
    if (!topk_form) return 0;
    int32_t expected = 0;
    for (int32_t i = 0; i < a->n_tensors; i++) {
        const vd_adapter_tensor *t = &a->tensors[i];
        if (t->module < 0) {
            const vd_st_tensor *b = vd_safetensors_find(st, t->peft_key);
            if (!b) vd_die("%s: missing tensor %s", st->path, t->peft_key);
            if (b->ndim != 2 || b->shape[0] != t->shape[0] || b->shape[1] != t->shape[1])
                vd_die("%s: tensor %s is not [%lld, %lld]", st->path, t->peft_key, (long long)t->shape[0],
                       (long long)t->shape[1]);
            vd_safetensors_read_f32(st, b, hp + t->offset);
            expected++;
            continue;
        }
        size_t rows = t->numel / (size_t)nv;
        const vd_st_tensor *ti, *tw;
        snprintf(name, sizeof(name), "%s_topk_indices", t->peft_key);
        if (!(ti = vd_safetensors_find(st, name))) vd_die("%s: missing tensor %s (a save_only_topk_weights file)", st->path, name);
        snprintf(name, sizeof(name), "%s_topk_weights", t->peft_key);
        if (!(tw = vd_safetensors_find(st, name))) vd_die("%s: missing tensor %s (a save_only_topk_weights file)", st->path, name);
        expected += 2;
        if (ti->ndim != 3 || ti->shape[0] != t->shape[0] || ti->shape[1] != t->shape[1] || ti->shape[2] != k)
            vd_die("%s: tensor %s_topk_indices is not [%lld, %lld, %d] (other r, topk, vector_length or model?)",
                   st->path, t->peft_key, (long long)t->shape[0], (long long)t->shape[1], (int)k);
        if (tw->ndim != 3 || tw->shape[0] != t->shape[0] || tw->shape[1] != t->shape[1] || tw->shape[2] != k - 1)
            vd_die("%s: tensor %s_topk_weights is not [%lld, %lld, %d]", st->path, t->peft_key, (long long)t->shape[0],
                   (long long)t->shape[1], (int)(k - 1));
        int64_t *idx = mallocCheck(sizeof(int64_t) * rows * (size_t)k);
        float *w = mallocCheck(sizeof(float) * (rows * (size_t)(k - 1) + 1));
        vd_safetensors_read_int(st, ti, idx);
        vd_safetensors_read_f32(st, tw, w);
        float *lg = hp + t->offset;
        for (size_t rr = 0; rr < rows; rr++) {
            float *row = lg + rr * (size_t)nv;
            for (int32_t c = 0; c < nv; c++) row[c] = -INFINITY;
            float rest = 1.0f;
            for (int32_t j = 0; j < k; j++) {
                int64_t v = idx[rr * (size_t)k + j];
                if (v < 0 || v >= nv) vd_die("%s: %s_topk_indices holds %lld, outside 0..%d", st->path, t->peft_key, (long long)v, nv - 1);
                float wj = j < k - 1 ? w[rr * (size_t)(k - 1) + j] : rest;
                if (j < k - 1) rest -= wj;
                row[v] = logf(wj);
            }
        }
        free(idx);
        free(w);
    }
    if (st->n_tensors != expected)
        vd_die("%s: %d tensors, expected %d (the bank and the top-k indices and weights of every adapted layer; "
               "HINT: check target_modules)", st->path, (int)st->n_tensors, (int)expected);
    snprintf(vblora_of(a)->topk_only_path, sizeof(vblora_of(a)->topk_only_path), "%s", st->path);
    return 1;
}

const vd_adapter_ops vd_vblora_ops = {
    .name = "vblora",
    .peft_type = "VBLORA",
    .trainable_formula = "num_vectors * vector_length + sum over adapted layers of r * (in + out) / vector_length * num_vectors",
    .describe = vblora_describe,
    .layout = vblora_layout,
    .size = vblora_size,
    .init_params = vblora_init_params,
    .alloc_acts = vblora_alloc_acts,
    .refresh = vblora_refresh,
    .zero_grads = NULL,
    .linear_forward = vblora_linear_forward,
    .linear_backward = vblora_linear_backward,
    .free = vblora_free,
    .peft_config_write = vblora_peft_config_write,
    .peft_config_read = vblora_peft_config_read,
    .peft_write_tensors = vblora_peft_write_tensors,
    .peft_read_tensors = vblora_peft_read_tensors,
    .check_trainable = vblora_refuse_topk_only,
};
