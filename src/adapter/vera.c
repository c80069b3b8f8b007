/* vera.c: VeRA as one method of the adapter seam (include/vera/adapter.h). Per adapted layer
 * y += b * (B[:out] (d * (A[:, :in] x))) as in docs/vera-math (PEFT's definition), with the
 * frozen projections A (r x max_in) and B (max_out x r) shared by every layer and drawn from
 * projection_prng_key. See docs/architecture.md for the choice of gradient path. */
#include "vera/adapter.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vera/common.h"
#include "vera/peft.h"
#include "vera/prng.h"

/* VeRA's private state (vd_adapter.state). */
typedef struct {
    float *A;            /* (r, max_in) device */
    float *B;            /* (max_out, r) device */
    /* bf16 copies of A and B for the adapter GEMMs when the base weights are bf16 (W0 NULL):
     * they run on bf16 inputs like the base GEMMs (U and the other fp32 operands are rounded as
     * they enter gemm_ex); the vector gradients read the fp32 B. Else NULL. */
    void *A16;           /* (r, max_in) device bf16 */
    void *B16;           /* (max_out, r) device bf16 */
    size_t *off_b;       /* (n_modules) offset of lambda_b (out) in params / grads */
    size_t *off_d;       /* (n_modules) offset of lambda_d (r) */
    /* U = A[:, :in] x of a layer (N, r), for the vector gradients: kept by the forward on the
     * factored path, which needs it anyway (U[i]); formed in the backward from the layer's input
     * on the merged path (NULL U[i]: the forward needs no U there), into Ub. The next backward
     * reuses Ub when the model promises the same input (vd_adapter_share_input: q, k, v; gate, up). */
    float **U;           /* (n_modules) of (N, r), NULL for merged modules */
    float *Ub;           /* (N, r) U of the input of a->input_epoch Ub_epoch (Ub_in wide, Ub_N rows) */
    uint64_t Ub_epoch;   /* 0: none */
    int32_t Ub_in, Ub_N;
    /* scratch, sized for N = B*T tokens */
    float *xdrop;        /* (N, max_in) dropped adapter input */
    float *tmp_r;        /* (N, r) */
    float *tmp_out;      /* (N, max(max_out, max_in)) */
    float *M;            /* (max_out, r) G^T U; diag(b) B[:out] diag(d) while building weff */
} vera_state;

static vera_state *vera_of(const vd_adapter *a) { return (vera_state *)a->state; }

static void vera_layout(vd_adapter *a) {
    const vd_adapter_options *opt = &a->opt;
    const vd_backend *be = a->be;
    vera_state *s = callocCheck(1, sizeof(vera_state));
    a->state = s;
    s->off_b = callocCheck((size_t)a->n_modules, sizeof(size_t));
    s->off_d = callocCheck((size_t)a->n_modules, sizeof(size_t));
    s->U = callocCheck((size_t)a->n_modules, sizeof(float *));
    int32_t g = vd_adapter_add_group(a, "default", opt->lr);
    char key[192], path[160];
    for (int32_t i = 0; i < a->n_modules; i++) {
        const vd_adapter_module *md = &a->modules[i];
        int64_t nb = md->out, nd = opt->r;
        snprintf(key, sizeof(key), "base_model.model.%s.vera_lambda_b", md->name);
        snprintf(path, sizeof(path), "%s/lambda_b", md->name);
        s->off_b[i] = a->n_trainable;
        vd_adapter_add_tensor(a, key, path, i, g, 1, &nb);
        snprintf(key, sizeof(key), "base_model.model.%s.vera_lambda_d", md->name);
        snprintf(path, sizeof(path), "%s/lambda_d", md->name);
        s->off_d[i] = a->n_trainable;
        vd_adapter_add_tensor(a, key, path, i, g, 1, &nd);
    }
    /* projections: generated on the host from the key, identical on every rank and backend */
    size_t na = (size_t)opt->r * a->max_in, nbm = (size_t)a->max_out * opt->r;
    float *hA = mallocCheck(sizeof(float) * na);
    float *hB = mallocCheck(sizeof(float) * nbm);
    vd_vera_projections(opt->key, opt->r, a->max_in, a->max_out, hA, hB);
    a->identity_checksum = vd_hash64(hB, sizeof(float) * nbm, vd_hash64(hA, sizeof(float) * na, 0));
    s->A = be->alloc(sizeof(float) * na);
    s->B = be->alloc(sizeof(float) * nbm);
    be->to_device(s->A, hA, sizeof(float) * na);
    be->to_device(s->B, hB, sizeof(float) * nbm);
    if (a->wdtype == VD_DTYPE_BF16) { /* bf16 base weights: bf16 projections for their GEMMs */
        s->A16 = be->alloc(sizeof(uint16_t) * na);
        s->B16 = be->alloc(sizeof(uint16_t) * nbm);
        be->to_bf16(s->A16, s->A, na);
        be->to_bf16(s->B16, s->B, nbm);
    }
    free(hA);
    free(hB);
    int64_t sa[2] = {opt->r, a->max_in}, sb[2] = {a->max_out, opt->r};
    vd_adapter_add_saved(a, "base_model.vera_A", "A", s->A, 2, sa);
    vd_adapter_add_saved(a, "base_model.vera_B", "B", s->B, 2, sb);
}

/* layout's lambda_b (out) and lambda_d (r) per module, the projections A (r, max_in), B (max_out, r)
 * (and their bf16 copies), alloc_acts' U per factored module (those that do not merge at N tokens
 * per step: an upper bound when grad_accum > 1 merges more), Ub and scratch */
static void vera_size(const vd_adapter_options *opt, const int32_t *in, const int32_t *out, int32_t n_modules,
                      int32_t max_in, int32_t max_out, size_t N, int bf16, vd_adapter_size *sz) {
    size_t r = (size_t)opt->r, wide = (size_t)(max_out > max_in ? max_out : max_in), proj = r * max_in + max_out * r;
    size_t n_u = 1; /* Ub */
    for (int32_t i = 0; i < n_modules; i++) {
        sz->n_trainable += (size_t)out[i] + r;
        n_u += bf16 || !vd_adapter_merge_pays(opt->dropout, (int64_t)N, VD_WEFF_AUTO, in[i], out[i]);
    }
    sz->state_bytes = sizeof(float) * (proj + n_u * N * r + N * (size_t)max_in + N * r + N * wide + (size_t)max_out * r) +
                      (bf16 ? sizeof(uint16_t) * proj : 0);
    sz->merge_dropout = opt->dropout;
    snprintf(sz->shared, sizeof(sz->shared),
             "shared projections: A %d x %d, B %d x %d (regenerated on every rank from projection_prng_key %llu)",
             (int)r, (int)max_in, (int)max_out, (int)r, (unsigned long long)opt->key);
}

/* b = 0 (so dW = 0 at start), d = d_initial */
static void vera_init_params(const vd_adapter *a, float *hp) {
    const vera_state *s = vera_of(a);
    for (int32_t i = 0; i < a->n_modules; i++)
        for (int32_t k = 0; k < a->opt.r; k++) hp[s->off_d[i] + (size_t)k] = a->opt.d_initial;
}

static void vera_alloc_acts(vd_adapter *a, int32_t N, int64_t tokens_per_step, vd_weff_policy policy) {
    const vd_backend *be = a->be;
    vera_state *s = vera_of(a);
    int32_t r = a->opt.r;
    int32_t wide = a->max_out > a->max_in ? a->max_out : a->max_in;
    s->xdrop = be->alloc(sizeof(float) * (size_t)N * a->max_in);
    s->tmp_r = be->alloc(sizeof(float) * (size_t)N * r);
    s->tmp_out = be->alloc(sizeof(float) * (size_t)N * wide);
    s->M = be->alloc(sizeof(float) * (size_t)a->max_out * r);
    s->Ub = be->alloc(sizeof(float) * (size_t)N * r);
    vd_adapter_alloc_weffs(a, a->opt.dropout, tokens_per_step, policy);
    for (int32_t i = 0; i < a->n_modules; i++)
        if (!a->modules[i].weff) s->U[i] = be->alloc(sizeof(float) * (size_t)N * r);
    vd_adapter_refresh(a);
}

/* weff (in x out) = W0 + dW^T with dW^T = A[:, :in]^T (diag(b) B[:out] diag(d))^T: the vectors
 * folded into the rank-r factor, the GEMM accumulating onto the copy of W0 (no dW^T buffer). */
static void vera_refresh(vd_adapter *a) {
    const vd_backend *be = a->be;
    vera_state *s = vera_of(a);
    int32_t r = a->opt.r;
    s->Ub_epoch = 0;
    for (int32_t i = 0; i < a->n_modules; i++) {
        vd_adapter_module *md = &a->modules[i];
        if (!md->weff) continue;
        const float *b = a->params + s->off_b[i], *d = a->params + s->off_d[i];
        float *Bbd = s->M; /* (out x r) in the M scratch (max_out x r; unused outside backward) */
        be->scale_cols(Bbd, s->B, d, md->out, r);
        be->scale_rows(Bbd, Bbd, b, md->out, r);
        be->copy(md->weff, md->W0, sizeof(float) * (size_t)md->in * md->out);
        be->gemm(1, 1, md->in, md->out, r, 1.0f, s->A, a->max_in, Bbd, r, 1.0f, md->weff, md->out);
    }
}

static void vera_free(vd_adapter *a) {
    const vd_backend *be = a->be;
    vera_state *s = vera_of(a);
    if (!s) return;
    for (int32_t i = 0; i < a->n_modules; i++) {
        if (s->U[i]) be->free(s->U[i]);
        if (a->modules[i].weff) be->free(a->modules[i].weff);
        a->modules[i].weff = NULL;
    }
    if (s->Ub) be->free(s->Ub);
    be->free(s->A);
    be->free(s->B);
    if (s->A16) be->free(s->A16);
    if (s->B16) be->free(s->B16);
    if (s->xdrop) be->free(s->xdrop);
    if (s->tmp_r) be->free(s->tmp_r);
    if (s->tmp_out) be->free(s->tmp_out);
    if (s->M) be->free(s->M);
    free(s->off_b);
    free(s->off_d);
    free(s->U);
    free(s);
    a->state = NULL;
}

/* A projection as a GEMM operand: the bf16 copy when there is one, else fp32. */
static const void *vera_proj(const float *p32, const void *p16, vd_dtype *t) {
    *t = p16 ? VD_DTYPE_BF16 : VD_DTYPE_F32;
    return p16 ? p16 : (const void *)p32;
}

/* After the base GEMM: nothing where the merged weight holds the adapter term; else
 * U = x A[:, :in]^T (kept for the vector gradients) and the factored term
 * z = (U diag(d)) B[:out]^T, out += z diag(b) (PEFT's order). */
static void vera_linear_forward(vd_adapter *a, int32_t module, float *out, const float *inp, int32_t N,
                                const vd_fwd_ctx *ctx) {
    const vd_backend *be = a->be;
    vera_state *s = vera_of(a);
    vd_adapter_module *md = &a->modules[module];
    int32_t r = a->opt.r, in = md->in, outd = md->out;
    const float *b = a->params + s->off_b[module], *d = a->params + s->off_d[module];
    if (md->weff) return;
    const float *x = vd_adapter_dropped(a, module, s->xdrop, inp, a->opt.dropout, N, ctx);
    vd_dtype ta, tb;
    const void *A = vera_proj(s->A, s->A16, &ta), *Bp = vera_proj(s->B, s->B16, &tb);
    be->gemm_ex(0, 1, N, r, in, 1.0f, x, VD_DTYPE_F32, in, A, ta, a->max_in, 0.0f, s->U[module], r);
    be->scale_cols(s->tmp_r, s->U[module], d, N, r);
    be->gemm_ex(0, 1, N, outd, r, 1.0f, s->tmp_r, VD_DTYPE_F32, r, Bp, tb, r, 0.0f, s->tmp_out, outd);
    be->scale_cols_add(out, s->tmp_out, b, N, outd);
}

/* U of a merged module (no dropout, fp32 projections) from the layer's input x, or the one an
 * earlier backward formed from the same input (the model promised it: a->input_epoch). */
static const float *vera_merged_u(vd_adapter *a, const float *x, int32_t in, int32_t N) {
    vera_state *s = vera_of(a);
    if (!(s->Ub_epoch == a->input_epoch && s->Ub_in == in && s->Ub_N == N)) {
        a->be->gemm(0, 1, N, a->opt.r, in, 1.0f, x, in, s->A, a->max_in, 0.0f, s->Ub, a->opt.r);
        s->Ub_epoch = a->input_epoch;
        s->Ub_in = in;
        s->Ub_N = N;
    }
    return s->Ub;
}

/* After the base GEMM dinp = G (W0 or weff)^T: both vector gradients from one rank-r product
 * M = G^T U (out x r); then, on the factored path, dx += mask * (((G diag(b)) B[:out]) diag(d)) A[:, :in]. */
static void vera_linear_backward(vd_adapter *a, int32_t module, float *dinp, const float *dout, const float *inp,
                                 int32_t N, const vd_fwd_ctx *ctx) {
    const vd_backend *be = a->be;
    vera_state *s = vera_of(a);
    vd_adapter_module *md = &a->modules[module];
    int32_t r = a->opt.r, in = md->in, outd = md->out;
    const float *b = a->params + s->off_b[module], *d = a->params + s->off_d[module];
    const float *U = md->weff ? vera_merged_u(a, inp, in, N) : s->U[module];
    be->gemm(1, 0, outd, r, N, 1.0f, dout, outd, U, r, 0.0f, s->M, r);
    be->vera_vector_grads(a->grads + s->off_b[module], a->grads + s->off_d[module], s->M, s->B, b, d, outd, r);
    if (md->weff || !dinp) return; /* the adapter path is in weff, or no input gradient is wanted */
    be->scale_cols(s->tmp_out, dout, b, N, outd);
    vd_dtype ta, tb;
    const void *A = vera_proj(s->A, s->A16, &ta), *Bp = vera_proj(s->B, s->B16, &tb);
    be->gemm_ex(0, 0, N, r, outd, 1.0f, s->tmp_out, VD_DTYPE_F32, outd, Bp, tb, r, 0.0f, s->tmp_r, r);
    be->scale_cols(s->tmp_r, s->tmp_r, d, N, r);
    if (a->opt.dropout > 0.0f && ctx->training) {
        be->gemm_ex(0, 0, N, in, r, 1.0f, s->tmp_r, VD_DTYPE_F32, r, A, ta, a->max_in, 0.0f, s->xdrop, in);
        be->dropout(s->xdrop, s->xdrop, N, in, a->opt.dropout, vd_adapter_dropout_seed(ctx, module), ctx->row0);
        be->accumulate(dinp, s->xdrop, (size_t)N * in);
    } else {
        be->gemm_ex(0, 0, N, in, r, 1.0f, s->tmp_r, VD_DTYPE_F32, r, A, ta, a->max_in, 1.0f, dinp, in);
    }
}

static void vera_describe(const vd_adapter *a, char *out, size_t cap) {
    snprintf(out, cap, ", A %dx%d, B %dx%d, projection checksum %016llx", (int)a->opt.r, (int)a->max_in,
             (int)a->max_out, (int)a->opt.r, (unsigned long long)a->identity_checksum);
}

static void vera_peft_config_write(const vd_adapter *a, cJSON *root, int save_saved) {
    /* the shortest decimal that reads back as the same float: 0.1, not 0.10000000149011612 */
    char dtext[32];
    vd_format_float_shortest(dtext, sizeof(dtext), a->opt.d_initial);
    cJSON_AddItemToObject(root, "d_initial", cJSON_CreateRaw(dtext));
    cJSON_AddBoolToObject(root, "init_weights", 1);
    /* cJSON prints doubles; a 64-bit key above 2^53 needs its exact digits */
    char keytext[32];
    snprintf(keytext, sizeof(keytext), "%llu", (unsigned long long)a->opt.key);
    cJSON_AddItemToObject(root, "projection_prng_key", cJSON_CreateRaw(keytext));
    cJSON_AddBoolToObject(root, "save_projection", save_saved != 0);
    cJSON_AddNumberToObject(root, "vera_dropout", (double)a->opt.dropout);
}

/* r and projection_prng_key; dropout and d_initial stay 0 (the vectors come from the file). */
static void vera_peft_config_read(const cJSON *root, const char *text, const char *path, vd_adapter_options *opt,
                                  const vd_adapter_options *run) {
    opt->r = vd_peft_read_rank(root, path, run ? run->r : 0);
    /* JSON numbers are doubles in cJSON, which cannot tell 2^60 from 2^60 + 1: read the key's
     * digits from the text itself and compare as uint64 */
    unsigned long long key = 0;
    if (!vd_peft_read_u64(text, "projection_prng_key", &key))
        vd_die("%s: projection_prng_key is missing or not a non-negative integer", path);
    if (run && (uint64_t)key != run->key)
        vd_die("%s: projection_prng_key is %llu, this run has %llu", path, key, (unsigned long long)run->key);
    opt->key = (uint64_t)key;
}

const vd_adapter_ops vd_vera_ops = {
    .name = "vera",
    .peft_type = "VERA",
    .trainable_formula = "sum over adapted layers of out + r",
    .describe = vera_describe,
    .layout = vera_layout,
    .size = vera_size,
    .init_params = vera_init_params,
    .alloc_acts = vera_alloc_acts,
    .refresh = vera_refresh,
    .zero_grads = NULL,
    .linear_forward = vera_linear_forward,
    .linear_backward = vera_linear_backward,
    .free = vera_free,
    .peft_config_write = vera_peft_config_write,
    .peft_config_read = vera_peft_config_read,
    .peft_write_tensors = NULL,
};
