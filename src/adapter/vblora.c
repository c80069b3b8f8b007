/* vblora.c: VB-LoRA layers. See include/vera/vblora.h for the layout and ownership and
 * docs/adapters.md for the math; the top-k admixture itself is three backend ops
 * (vblora_topk, vblora_compose, vblora_compose_backward). */
#include "vera/vblora.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vera/adapter.h"
#include "vera/common.h"
#include "vera/prng.h"

/* PEFT's two layouts (VBLoRA Linear._get_lora_matrices): A (r, in) = sub-vectors (i, t) at
 * A[i, t*L + l]; B (out, r) from logits (out/L, r, nv): sub-vector (t, j) at B[t*L + l, j]. */
static vd_vblora_shape shape_a(const vd_vblora_options *o, int32_t in) {
    vd_vblora_shape s = {o->r, in / o->vector_length, o->vector_length, o->num_vectors, o->topk, in,
                         o->vector_length, 1};
    return s;
}

static vd_vblora_shape shape_b(const vd_vblora_options *o, int32_t out) {
    vd_vblora_shape s = {out / o->vector_length, o->r, o->vector_length, o->num_vectors, o->topk,
                         o->vector_length * o->r, 1, o->r};
    return s;
}

static size_t shape_rows(const vd_vblora_shape *s) { return (size_t)s->n_outer * s->n_inner; }

static void check_options(const vd_vblora_options *o) {
    if (o->r <= 0) vd_die("vblora: r must be a positive integer, got %d", o->r);
    if (o->num_vectors <= 0) vd_die("vblora: num_vectors must be a positive integer, got %d", o->num_vectors);
    if (o->vector_length <= 0) vd_die("vblora: vector_length must be a positive integer, got %d", o->vector_length);
    if (o->topk <= 0 || o->topk > o->num_vectors)
        vd_die("vblora: topk must be in 1..num_vectors (%d), got %d", o->num_vectors, o->topk);
    if (!(o->dropout >= 0.0f && o->dropout < 1.0f)) vd_die("vblora: vblora_dropout must be in [0, 1), got %g", (double)o->dropout);
    if (o->target_mask == 0) vd_die("target_modules: no layer selected");
}

void vd_vblora_init(vd_vblora *v, const vd_backend *be, const vd_model *m, const vd_vblora_options *opt) {
    check_options(opt);
    memset(v, 0, sizeof(*v));
    v->be = be;
    v->opt = *opt;
    const int32_t L = opt->vector_length;
    v->n_sites = m->n_sites;
    v->module_of = mallocCheck(sizeof(int32_t) * (size_t)m->n_sites);
    v->modules = callocCheck((size_t)m->n_sites, sizeof(vd_vblora_module));
    v->n_bank = (size_t)opt->num_vectors * L;
    size_t off = v->n_bank; /* the bank first: the two optimizer groups are two ranges */
    for (int32_t i = 0; i < m->n_sites; i++) {
        const vd_linear_site *s = &m->sites[i];
        v->module_of[i] = -1;
        if (!(opt->target_mask & (1u << s->kind))) continue;
        /* PEFT refuses the same (VBLoRALayer.update_layer) */
        if (s->in % L != 0)
            vd_die("vblora: layer %s: in_features %d is not divisible by vector_length %d", s->name, s->in, L);
        if (s->out % L != 0)
            vd_die("vblora: layer %s: out_features %d is not divisible by vector_length %d", s->name, s->out, L);
        vd_vblora_module *md = &v->modules[v->n_modules];
        snprintf(md->name, sizeof(md->name), "%s", s->name);
        md->layer = s->layer;
        md->kind = s->kind;
        md->site = i;
        md->in = s->in;
        md->out = s->out;
        md->W0 = vd_tensor_f32(&s->W);
        md->sa = shape_a(opt, s->in);
        md->sb = shape_b(opt, s->out);
        md->off_la = off;
        off += shape_rows(&md->sa) * (size_t)opt->num_vectors;
        md->off_lb = off;
        off += shape_rows(&md->sb) * (size_t)opt->num_vectors;
        if (md->in > v->max_in) v->max_in = md->in;
        if (md->out > v->max_out) v->max_out = md->out;
        v->module_of[i] = v->n_modules++;
    }
    v->n_trainable = off;
    v->n_reduce = off + 2; /* + loss sum + stop-request count */

    /* Init as PEFT's distributions: bank ~ uniform(-bound, bound) (torch's uniform_ stream),
     * then logits ~ normal(0, std), module by module, A before B. PEFT draws its bank once per
     * adapted layer and keeps the last; the streams are not PEFT's (interop is through files). */
    float *hp = mallocCheck(sizeof(float) * v->n_trainable);
    vd_mt19937 g;
    vd_mt19937_seed(&g, opt->seed);
    vd_torch_uniform_f32(&g, hp, v->n_bank, -(double)opt->init_vector_bank_bound, (double)opt->init_vector_bank_bound);
    for (size_t i = v->n_bank; i < v->n_trainable; i++) hp[i] = vd_mt19937_normal(&g) * opt->init_logits_std;
    v->params = be->alloc(sizeof(float) * v->n_trainable);
    v->grads = be->alloc(sizeof(float) * v->n_reduce);
    be->to_device(v->params, hp, sizeof(float) * v->n_trainable);
    free(hp);
    for (int32_t i = 0; i < v->n_modules; i++) {
        vd_vblora_module *md = &v->modules[i];
        size_t ra = shape_rows(&md->sa), rb = shape_rows(&md->sb);
        md->A = be->alloc(sizeof(float) * (size_t)opt->r * md->in);
        md->B = be->alloc(sizeof(float) * (size_t)md->out * opt->r);
        md->idx_a = be->alloc(sizeof(int32_t) * ra * (size_t)opt->topk);
        md->w_a = be->alloc(sizeof(float) * ra * (size_t)opt->topk);
        md->idx_b = be->alloc(sizeof(int32_t) * rb * (size_t)opt->topk);
        md->w_b = be->alloc(sizeof(float) * rb * (size_t)opt->topk);
    }
    vd_vblora_refresh(v);
}

void vd_vblora_alloc_acts(vd_vblora *v, int32_t N) {
    const vd_backend *be = v->be;
    int32_t r = v->opt.r;
    v->N = N;
    for (int32_t i = 0; i < v->n_modules; i++) {
        vd_vblora_module *md = &v->modules[i];
        md->X = be->alloc(sizeof(float) * (size_t)N * md->in);
        md->U = be->alloc(sizeof(float) * (size_t)N * r);
    }
    v->dU = be->alloc(sizeof(float) * (size_t)N * r);
    v->dA = be->alloc(sizeof(float) * (size_t)r * v->max_in);
    v->dB = be->alloc(sizeof(float) * (size_t)v->max_out * r);
    v->tmp_in = be->alloc(sizeof(float) * (size_t)N * v->max_in);
}

void vd_vblora_refresh(vd_vblora *v) {
    const vd_backend *be = v->be;
    const float *bank = v->params;
    for (int32_t i = 0; i < v->n_modules; i++) {
        vd_vblora_module *md = &v->modules[i];
        be->vblora_topk(md->idx_a, md->w_a, v->params + md->off_la, (int)shape_rows(&md->sa), md->sa.nv, md->sa.k);
        be->vblora_topk(md->idx_b, md->w_b, v->params + md->off_lb, (int)shape_rows(&md->sb), md->sb.nv, md->sb.k);
        be->vblora_compose(md->A, bank, md->idx_a, md->w_a, &md->sa);
        be->vblora_compose(md->B, bank, md->idx_b, md->w_b, &md->sb);
    }
}

void vd_vblora_zero_grads(vd_vblora *v) { v->be->zero(v->grads, sizeof(float) * v->n_reduce); }

void vd_vblora_free(vd_vblora *v) {
    const vd_backend *be = v->be;
    for (int32_t i = 0; i < v->n_modules; i++) {
        vd_vblora_module *md = &v->modules[i];
        void *bufs[] = {md->A, md->B, md->idx_a, md->w_a, md->idx_b, md->w_b, md->X, md->U};
        for (size_t j = 0; j < sizeof(bufs) / sizeof(bufs[0]); j++)
            if (bufs[j]) be->free(bufs[j]);
    }
    void *bufs[] = {v->params, v->grads, v->dU, v->dA, v->dB, v->tmp_in};
    for (size_t j = 0; j < sizeof(bufs) / sizeof(bufs[0]); j++)
        if (bufs[j]) be->free(bufs[j]);
    free(v->modules);
    free(v->module_of);
    memset(v, 0, sizeof(*v));
}

void vd_vblora_linear_forward(vd_vblora *v, int32_t module, float *out, const float *inp, const float *W,
                              const float *bias, int32_t N, int32_t in, int32_t outd, const vd_fwd_ctx *ctx) {
    const vd_backend *be = v->be;
    be->gemm(0, 0, N, outd, in, 1.0f, inp, in, W, outd, 0.0f, out, outd);
    if (bias) be->add_bias(out, bias, N, outd);
    if (module < 0) return;
    vd_vblora_module *md = &v->modules[module];
    int32_t r = v->opt.r;
    /* X = dropout(x) is kept: dA = dU^T X needs the layer input, which the model may reuse */
    if (v->opt.dropout > 0.0f && ctx->training)
        be->dropout(md->X, inp, N, in, v->opt.dropout, vd_vera_dropout_seed(ctx, module), ctx->row0);
    else
        be->copy(md->X, inp, sizeof(float) * (size_t)N * in);
    /* PEFT: result + F.linear(F.linear(dropout(x), A), B) */
    be->gemm(0, 1, N, r, in, 1.0f, md->X, in, md->A, in, 0.0f, md->U, r);
    be->gemm(0, 1, N, outd, r, 1.0f, md->U, r, md->B, r, 1.0f, out, outd);
}

void vd_vblora_linear_backward(vd_vblora *v, int32_t module, float *dinp, const float *dout, const float *W,
                               int32_t N, int32_t in, int32_t outd, const vd_fwd_ctx *ctx) {
    const vd_backend *be = v->be;
    be->gemm(0, 1, N, in, outd, 1.0f, dout, outd, W, outd, 0.0f, dinp, in);
    if (module < 0) return;
    vd_vblora_module *md = &v->modules[module];
    int32_t r = v->opt.r;
    /* dB (out x r) = G^T U, dU (N x r) = G B, dA (r x in) = dU^T X */
    be->gemm(1, 0, outd, r, N, 1.0f, dout, outd, md->U, r, 0.0f, v->dB, r);
    be->gemm(0, 0, N, r, outd, 1.0f, dout, outd, md->B, r, 0.0f, v->dU, r);
    be->gemm(1, 0, r, in, N, 1.0f, v->dU, r, md->X, in, 0.0f, v->dA, in);
    /* through the top-k admixture into this layer's logits and the shared bank */
    be->vblora_compose_backward(v->grads + md->off_la, v->grads, v->dA, v->params, md->idx_a, md->w_a, &md->sa);
    be->vblora_compose_backward(v->grads + md->off_lb, v->grads, v->dB, v->params, md->idx_b, md->w_b, &md->sb);
    /* input: dx += mask * (dU A) */
    if (v->opt.dropout > 0.0f && ctx->training) {
        be->gemm(0, 0, N, in, r, 1.0f, v->dU, r, md->A, in, 0.0f, v->tmp_in, in);
        be->dropout(v->tmp_in, v->tmp_in, N, in, v->opt.dropout, vd_vera_dropout_seed(ctx, module), ctx->row0);
        be->accumulate(dinp, v->tmp_in, (size_t)N * in);
    } else {
        be->gemm(0, 0, N, in, r, 1.0f, v->dU, r, md->A, in, 1.0f, dinp, in);
    }
}
