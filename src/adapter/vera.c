/* adapter.c: VeRA layers. See include/vera/adapter.h for ownership and docs/architecture.md
 * for the math and the choice of gradient path. */
#include "vera/adapter.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vera/common.h"
#include "vera/prng.h"

void vd_vera_init(vd_vera *v, const vd_backend *be, const vd_model *m, const vd_vera_options *opt) {
    memset(v, 0, sizeof(*v));
    v->be = be;
    v->opt = *opt;
    if (opt->target_mask == 0) vd_die("target_modules: no layer selected");
    v->family = m->family;
    snprintf(v->base_model_class, sizeof(v->base_model_class), "%s", m->config.hf_architecture);
    v->n_sites = m->n_sites;
    v->module_of = mallocCheck(sizeof(int32_t) * (size_t)m->n_sites);
    v->modules = callocCheck((size_t)m->n_sites, sizeof(vd_vera_module));
    size_t off = 0;
    /* sites come block by block, kinds in the family's order: PEFT's module order */
    for (int32_t i = 0; i < m->n_sites; i++) {
        const vd_linear_site *s = &m->sites[i];
        v->module_of[i] = -1;
        if (!(opt->target_mask & (1u << s->kind))) continue;
        vd_vera_module *md = &v->modules[v->n_modules];
        snprintf(md->name, sizeof(md->name), "%s", s->name);
        md->layer = s->layer;
        md->kind = s->kind;
        md->site = i;
        md->in = s->in;
        md->out = s->out;
        md->W0 = s->W.dtype == VD_DTYPE_F32 ? vd_tensor_f32(&s->W) : NULL;
        md->off_b = off;
        off += (size_t)md->out;
        md->off_d = off;
        off += (size_t)opt->r;
        if (md->in > v->max_in) v->max_in = md->in;
        if (md->out > v->max_out) v->max_out = md->out;
        v->module_of[i] = v->n_modules++;
    }
    v->n_trainable = off;
    v->n_reduce = off + 2; /* + loss sum + stop-request count */

    /* projections: generated on the host from the key, identical on every rank and backend */
    size_t na = (size_t)opt->r * v->max_in, nbm = (size_t)v->max_out * opt->r;
    float *hA = mallocCheck(sizeof(float) * na);
    float *hB = mallocCheck(sizeof(float) * nbm);
    vd_vera_projections(opt->key, opt->r, v->max_in, v->max_out, hA, hB);
    v->proj_checksum = vd_hash64(hB, sizeof(float) * nbm, vd_hash64(hA, sizeof(float) * na, 0));
    v->A = be->alloc(sizeof(float) * na);
    v->B = be->alloc(sizeof(float) * nbm);
    be->to_device(v->A, hA, sizeof(float) * na);
    be->to_device(v->B, hB, sizeof(float) * nbm);
    int bf16 = 0;
    for (int32_t i = 0; i < v->n_modules; i++) bf16 |= m->sites[v->modules[i].site].W.dtype == VD_DTYPE_BF16;
    if (bf16) {
        v->A16 = be->alloc(sizeof(uint16_t) * na);
        v->B16 = be->alloc(sizeof(uint16_t) * nbm);
        be->to_bf16(v->A16, v->A, na);
        be->to_bf16(v->B16, v->B, nbm);
    }
    free(hA);
    free(hB);

    /* b = 0 (so dW = 0 at start), d = d_initial */
    float *hp = callocCheck(v->n_trainable, sizeof(float));
    for (int32_t i = 0; i < v->n_modules; i++)
        for (int32_t k = 0; k < opt->r; k++) hp[v->modules[i].off_d + (size_t)k] = opt->d_initial;
    v->params = be->alloc(sizeof(float) * v->n_trainable);
    v->grads = be->alloc(sizeof(float) * v->n_reduce);
    be->to_device(v->params, hp, sizeof(float) * v->n_trainable);
    free(hp);
}

void vd_vera_alloc_acts(vd_vera *v, int32_t N, int64_t tokens_per_step, vd_weff_policy policy) {
    const vd_backend *be = v->be;
    int32_t r = v->opt.r;
    v->N = N;
    v->weff_policy = policy;
    int32_t wide = v->max_out > v->max_in ? v->max_out : v->max_in;
    v->xdrop = be->alloc(sizeof(float) * (size_t)N * v->max_in);
    v->tmp_r = be->alloc(sizeof(float) * (size_t)N * r);
    v->tmp_out = be->alloc(sizeof(float) * (size_t)N * wide);
    v->M = be->alloc(sizeof(float) * (size_t)v->max_out * r);
    int any_weff = 0;
    for (int32_t i = 0; i < v->n_modules; i++) {
        vd_vera_module *md = &v->modules[i];
        md->U = be->alloc(sizeof(float) * (size_t)N * r);
        /* The merged input gradient G (W0 + dW)^T costs 2*in*out*r once per step to form and
         * saves 2*r*(in+out) per token; dropout breaks it (the mask sits inside the sum). */
        int use = 0;
        if (v->opt.dropout == 0.0f && md->W0) { /* never merge into a bf16 W0 (W0 NULL) */
            if (policy == VD_WEFF_ALWAYS) use = 1;
            else if (policy == VD_WEFF_AUTO)
                use = (double)tokens_per_step * (md->in + md->out) > (double)md->in * md->out;
        }
        if (use) {
            md->weff = be->alloc(sizeof(float) * (size_t)md->in * md->out);
            any_weff = 1;
        }
    }
    if (any_weff) v->tmp_w = be->alloc(sizeof(float) * (size_t)v->max_in * v->max_out);
    vd_vera_refresh(v);
}

void vd_vera_refresh(vd_vera *v) {
    const vd_backend *be = v->be;
    int32_t r = v->opt.r;
    for (int32_t i = 0; i < v->n_modules; i++) {
        vd_vera_module *md = &v->modules[i];
        if (!md->weff) continue;
        const float *b = v->params + md->off_b, *d = v->params + md->off_d;
        /* Bd (out x r) = B[:out] diag(d), in the M scratch (max_out x r; unused outside backward) */
        float *Bd = v->M;
        be->scale_cols(Bd, v->B, d, md->out, r);
        /* dW^T (in x out) = A[:, :in]^T Bd^T, then columns scaled by b */
        be->gemm(1, 1, md->in, md->out, r, 1.0f, v->A, v->max_in, Bd, r, 0.0f, v->tmp_w, md->out);
        be->copy(md->weff, md->W0, sizeof(float) * (size_t)md->in * md->out);
        be->scale_cols_add(md->weff, v->tmp_w, b, md->in, md->out);
    }
}

void vd_vera_zero_grads(vd_vera *v) { v->be->zero(v->grads, sizeof(float) * v->n_reduce); }

void vd_vera_free(vd_vera *v) {
    const vd_backend *be = v->be;
    for (int32_t i = 0; i < v->n_modules; i++) {
        if (v->modules[i].U) be->free(v->modules[i].U);
        if (v->modules[i].weff) be->free(v->modules[i].weff);
    }
    be->free(v->A);
    be->free(v->B);
    if (v->A16) be->free(v->A16);
    if (v->B16) be->free(v->B16);
    be->free(v->params);
    be->free(v->grads);
    if (v->xdrop) be->free(v->xdrop);
    if (v->tmp_r) be->free(v->tmp_r);
    if (v->tmp_out) be->free(v->tmp_out);
    if (v->M) be->free(v->M);
    if (v->tmp_w) be->free(v->tmp_w);
    free(v->modules);
    free(v->module_of);
    memset(v, 0, sizeof(*v));
}

/* The projection operand of an adapter GEMM: the bf16 copy when there is one, else fp32. */
static const void *vera_proj(const float *p32, const void *p16, vd_dtype *t) {
    *t = p16 ? VD_DTYPE_BF16 : VD_DTYPE_F32;
    return p16 ? p16 : (const void *)p32;
}

/* Per-module dropout stream: the mask depends on (seed, step, module, global row, column). */
uint64_t vd_vera_dropout_seed(const vd_fwd_ctx *ctx, int32_t module) {
    return vd_mix64(ctx->dropout_seed ^ vd_mix64(0x5eed0000ULL + (uint64_t)module));
}

void vd_linear_forward(vd_vera *v, const vd_backend *be, int32_t module, float *out, const float *inp,
                       const vd_tensor *W, const float *bias, int32_t N, int32_t in, int32_t outd,
                       const vd_fwd_ctx *ctx) {
    vd_vera_module *md = module >= 0 ? &v->modules[module] : NULL;
    /* with a merged weight (no dropout) the adapter term is already inside W0 + dW */
    if (md && md->weff) be->gemm(0, 0, N, outd, in, 1.0f, inp, in, md->weff, outd, 0.0f, out, outd);
    else be->gemm_ex(0, 0, N, outd, in, 1.0f, inp, VD_DTYPE_F32, in, W->data, W->dtype, outd, 0.0f, out, outd);
    if (bias) be->add_bias(out, bias, N, outd);
    if (!md) return;
    int32_t r = v->opt.r;
    const float *b = v->params + md->off_b, *d = v->params + md->off_d;
    const float *x = inp;
    if (v->opt.dropout > 0.0f && ctx->training) {
        be->dropout(v->xdrop, inp, N, in, v->opt.dropout, vd_vera_dropout_seed(ctx, module), ctx->row0);
        x = v->xdrop;
    }
    /* U = x A[:, :in]^T is kept for the vector gradients (M = G^T U) */
    vd_dtype ta, tb;
    const void *A = vera_proj(v->A, v->A16, &ta), *Bp = vera_proj(v->B, v->B16, &tb);
    be->gemm_ex(0, 1, N, r, in, 1.0f, x, VD_DTYPE_F32, in, A, ta, v->max_in, 0.0f, md->U, r);
    if (md->weff) return;
    /* factored: z = (U diag(d)) B[:out]^T, out += z diag(b) (PEFT's order of operations) */
    be->scale_cols(v->tmp_r, md->U, d, N, r);
    be->gemm_ex(0, 1, N, outd, r, 1.0f, v->tmp_r, VD_DTYPE_F32, r, Bp, tb, r, 0.0f, v->tmp_out, outd);
    be->scale_cols_add(out, v->tmp_out, b, N, outd);
}

void vd_linear_backward(vd_vera *v, const vd_backend *be, int32_t module, float *dinp, const float *dout,
                        const vd_tensor *W, int32_t N, int32_t in, int32_t outd, const vd_fwd_ctx *ctx) {
    if (module < 0) {
        be->gemm_ex(0, 1, N, in, outd, 1.0f, dout, VD_DTYPE_F32, outd, W->data, W->dtype, outd, 0.0f, dinp, in);
        return;
    }
    vd_vera_module *md = &v->modules[module];
    int32_t r = v->opt.r;
    const float *b = v->params + md->off_b, *d = v->params + md->off_d;
    /* Both vector gradients from one rank-r product M = G^T U (out x r). */
    be->gemm(1, 0, outd, r, N, 1.0f, dout, outd, md->U, r, 0.0f, v->M, r);
    be->vera_vector_grads(v->grads + md->off_b, v->grads + md->off_d, v->M, v->B, b, d, outd, r);
    if (md->weff) {
        be->gemm(0, 1, N, in, outd, 1.0f, dout, outd, md->weff, outd, 0.0f, dinp, in);
        return;
    }
    be->gemm_ex(0, 1, N, in, outd, 1.0f, dout, VD_DTYPE_F32, outd, W->data, W->dtype, outd, 0.0f, dinp, in);
    /* adapter path: dx += mask * (((G diag(b)) B[:out]) diag(d)) A[:, :in] */
    be->scale_cols(v->tmp_out, dout, b, N, outd);
    vd_dtype ta, tb;
    const void *A = vera_proj(v->A, v->A16, &ta), *Bp = vera_proj(v->B, v->B16, &tb);
    be->gemm_ex(0, 0, N, r, outd, 1.0f, v->tmp_out, VD_DTYPE_F32, outd, Bp, tb, r, 0.0f, v->tmp_r, r);
    be->scale_cols(v->tmp_r, v->tmp_r, d, N, r);
    if (v->opt.dropout > 0.0f && ctx->training) {
        be->gemm_ex(0, 0, N, in, r, 1.0f, v->tmp_r, VD_DTYPE_F32, r, A, ta, v->max_in, 0.0f, v->xdrop, in);
        be->dropout(v->xdrop, v->xdrop, N, in, v->opt.dropout, vd_vera_dropout_seed(ctx, module), ctx->row0);
        be->accumulate(dinp, v->xdrop, (size_t)N * in);
    } else {
        be->gemm_ex(0, 0, N, in, r, 1.0f, v->tmp_r, VD_DTYPE_F32, r, A, ta, v->max_in, 1.0f, dinp, in);
    }
}
