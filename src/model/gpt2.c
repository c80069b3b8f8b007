/* model.c: GPT-2 forward and backward on a backend, base weights frozen. Only the adapter's
 * vectors receive gradients; no weight gradient or optimizer state exists for the base. */
#include "vera/model.h"

#include <stdlib.h>
#include <string.h>

#include "vera/adapter.h"
#include "vera/backend.h"
#include "vera/common.h"

/* ---- the family: GPT-2's four linear layers per block, in PEFT's module order ---- */

static void gpt2_kind_shape(const vd_model_config *c, int32_t kind, int32_t *in, int32_t *out) {
    int32_t C = c->channels;
    switch (kind) {
    case 0: *in = C; *out = 3 * C; break;     /* attn.c_attn */
    case 1: *in = C; *out = C; break;         /* attn.c_proj */
    case 2: *in = C; *out = 4 * C; break;     /* mlp.c_fc */
    default: *in = 4 * C; *out = C; break;    /* mlp.c_proj */
    }
}

const vd_model_family vd_family_gpt2 = {
    .arch = VD_ARCH_GPT2,
    .name = "gpt2",
    .n_kinds = 4,
    .kind_paths = {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"},
    .block_path = "transformer.h.%d.",
    .fan_in_fan_out = 1, /* Conv1D stores weights in x out */
    .peft_parent_library = "transformers.models.gpt2.modeling_gpt2",
    .kind_shape = gpt2_kind_shape,
    .num_params = vd_gpt2_num_params,
};

/* the four linear weights, by kind: indices into vd_gpt2_params order */
static const int k_gpt2_kind_tensor[4] = {4, 6, 10, 12}; /* qkvw, attprojw, fcw, fcprojw */

void vd_gpt2_init(vd_gpt2 *m, const vd_backend *be, const vd_gpt2_config *cfg, const float *host_params,
                  vd_dtype wdtype, vd_linear_site *sites) {
    memset(m, 0, sizeof(*m));
    m->config = *cfg;
    m->be = be;
    m->num_params = vd_gpt2_num_params(cfg);
    size_t sizes[VD_GPT2_NUM_PARAMS], host_off[VD_GPT2_NUM_PARAMS];
    float *f32[VD_GPT2_NUM_PARAMS];
    void *lin[VD_GPT2_NUM_PARAMS];
    vd_gpt2_param_sizes(cfg, sizes);
    uint32_t linear = 0;
    for (int k = 0; k < 4; k++) linear |= 1u << k_gpt2_kind_tensor[k];
    vd_model_upload(be, host_params, sizes, VD_GPT2_NUM_PARAMS, linear, wdtype, &m->params_memory, &m->lin_memory,
                    f32, lin, host_off);
    vd_gpt2_params_set(&m->params, f32);
    vd_model_fill_sites(&vd_family_gpt2, cfg, k_gpt2_kind_tensor, lin, host_off, wdtype, sites);
    m->sites = sites;
}

/* GPT-2's attention call: q, k, v in the fused qkv rows (3C floats), no kv groups */
static vd_attn_shape gpt2_attn_shape(const vd_model_config *c, int32_t B, int32_t T, const int32_t *pos) {
    int32_t C = c->channels, NH = c->n_head;
    return (vd_attn_shape){.B = B, .T = T, .n_head = NH, .n_kv_head = NH, .head_dim = C / NH,
                           .q_stride = 3 * C, .kv_stride = 3 * C, .pos = pos};
}

/* The activation buffers, in one place: allocates them on be when alloc is set, and returns
 * their total bytes either way (the memory estimate: be's attention state, the CPU's when be is
 * NULL). The block's own activations
 * (ln1 .. fch) exist once per layer, or once in all under recompute (the backward rebuilds
 * them block by block from residual3, which is always kept: it holds every block's input).
 * The adapted layers' inputs that are cheap to rebuild, ln1, ln2 and fch_gelu, exist once in
 * all: the backward rebuilds them (a layernorm, a GELU) where that layer's adapter needs its
 * input; the layernorm backward itself needs only the block input, mean and rstd. */
static size_t gpt2_acts(vd_gpt2 *m, const vd_backend *be, const vd_model_config *cfg, int32_t B, int32_t T,
                        int recompute, int alloc) {
    size_t L = (size_t)cfg->n_layer, C = (size_t)cfg->channels, NH = (size_t)cfg->n_head;
    size_t V = (size_t)cfg->vocab_size, N = (size_t)B * T;
    size_t LB = recompute ? 1 : L; /* block slots */
    vd_attn_shape ash = gpt2_attn_shape(cfg, B, T, NULL);
    size_t natt = vd_attention_saved_floats(be, &ash); /* the CPU's when be is NULL */
    size_t total = 0;
#define ACT(ptr, count)                                         \
    do {                                                        \
        total += sizeof(float) * (count);                       \
        if (alloc) (ptr) = be->alloc(sizeof(float) * (count));  \
    } while (0)
    ACT(m->encoded, N * C);
    ACT(m->ln1, N * C);
    ACT(m->ln1_mean, LB * N);
    ACT(m->ln1_rstd, LB * N);
    ACT(m->qkv, LB * N * 3 * C);
    ACT(m->atty, LB * N * C);
    ACT(m->att, LB * natt);
    ACT(m->residual2, LB * N * C);
    ACT(m->ln2, N * C);
    ACT(m->ln2_mean, LB * N);
    ACT(m->ln2_rstd, LB * N);
    ACT(m->fch, LB * N * 4 * C);
    ACT(m->fch_gelu, N * 4 * C);
    ACT(m->residual3, L * N * C);
    ACT(m->lnf, N * C);
    ACT(m->lnf_mean, N);
    ACT(m->lnf_rstd, N);
    ACT(m->logits, (N < VD_HEAD_CHUNK ? N : VD_HEAD_CHUNK) * V);
    ACT(m->losses, N);
    ACT(m->dresidual, N * C);
    ACT(m->dbuf_a, N * 4 * C);
    ACT(m->dbuf_b, N * 4 * C);
    ACT(m->dqkv, N * 3 * C);
    ACT(m->datt, (size_t)B * NH * T * T);
    ACT(m->proj_out, N * C);
#undef ACT
    total += 3 * sizeof(int32_t) * N;
    if (be) {
        m->inputs = be->alloc(sizeof(int32_t) * N);
        m->targets = be->alloc(sizeof(int32_t) * N);
        m->pos = be->alloc(sizeof(int32_t) * N);
        m->logit_rows = (int32_t)(N < VD_HEAD_CHUNK ? N : VD_HEAD_CHUNK);
    }
    return total;
}

void vd_gpt2_alloc_acts(vd_gpt2 *m, int32_t B, int32_t T) {
    m->B = B;
    m->T = T;
    gpt2_acts(m, m->be, &m->config, B, T, m->recompute, 1);
}

size_t vd_gpt2_act_bytes(const vd_model_config *cfg, int32_t B, int32_t T, int recompute, const vd_backend *be) {
    vd_gpt2 scratch;
    return gpt2_acts(&scratch, be, cfg, B, T, recompute, 0);
}

/* the frozen weight of block l's linear layer `kind` (F32 or BF16) */
static const vd_tensor *gpt2_w(const vd_gpt2 *m, int32_t l, int kind) { return &m->sites[l * 4 + kind].W; }

static int32_t gpt2_module(const vd_gpt2 *m, int32_t l, int kind) {
    return m->adapter ? m->adapter->module_of[l * 4 + kind] : -1;
}

/* Block l's activations for a forward of B sequences: layer l's slice, or under recompute the
 * one shared slot every block uses in turn. */
typedef struct {
    float *ln1, *ln1_mean, *ln1_rstd; /* (N, C), (N), (N) */
    float *qkv;                       /* (N, 3C) */
    float *atty;                      /* (N, C) */
    float *att;                       /* attention_saved_floats: the backend's saved state */
    float *res2;                      /* (N, C) */
    float *ln2, *ln2_mean, *ln2_rstd; /* (N, C), (N), (N) */
    float *fch, *fch_gelu;            /* (N, 4C); fch_gelu one slot for every block */
} gpt2_block_acts;

static gpt2_block_acts gpt2_block(const vd_gpt2 *m, int32_t l, int32_t B) {
    size_t s = m->recompute ? 0 : (size_t)l, N = (size_t)B * m->T, C = (size_t)m->config.channels;
    size_t NC = N * C;
    vd_attn_shape ash = gpt2_attn_shape(&m->config, B, m->T, NULL);
    return (gpt2_block_acts){
        .ln1 = m->ln1, .ln1_mean = m->ln1_mean + s * N, .ln1_rstd = m->ln1_rstd + s * N,
        .qkv = m->qkv + s * NC * 3, .atty = m->atty + s * NC,
        .att = m->att + s * vd_attention_saved_floats(m->be, &ash),
        .res2 = m->residual2 + s * NC, .ln2 = m->ln2, .ln2_mean = m->ln2_mean + s * N,
        .ln2_rstd = m->ln2_rstd + s * N, .fch = m->fch + s * NC * 4, .fch_gelu = m->fch_gelu};
}

/* the input of block l (the residual stream entering it) */
static const float *gpt2_block_input(const vd_gpt2 *m, int32_t l, int32_t B) {
    return l == 0 ? m->encoded : m->residual3 + (size_t)(l - 1) * B * m->T * m->config.channels;
}

/* The forward of block l on B sequences: residual3[l] = block(input of block l), the block's
 * activations into gpt2_block(l). The forward and the recompute in the backward both run this,
 * so the recomputed activations are bit for bit the forward's. */
static void gpt2_block_forward(vd_gpt2 *m, int32_t l, int32_t B, const vd_fwd_ctx *ctx) {
    const vd_backend *be = m->be;
    int32_t T = m->T, C = m->config.channels, N = B * T;
    size_t NC = (size_t)N * C;
    float eps = m->config.ln_eps;
    const vd_gpt2_params *p = &m->params;
    vd_adapter *ad = m->adapter;
    gpt2_block_acts a = gpt2_block(m, l, B);
    const float *residual = gpt2_block_input(m, l, B);
    float *res3 = m->residual3 + (size_t)l * NC;
    be->layernorm_forward(a.ln1, a.ln1_mean, a.ln1_rstd, residual, p->ln1w + (size_t)l * C, p->ln1b + (size_t)l * C,
                          N, C, eps);
    vd_linear_forward(ad, be, gpt2_module(m, l, 0), a.qkv, a.ln1, gpt2_w(m, l, 0), p->qkvb + (size_t)l * 3 * C, N, C,
                      3 * C, ctx);
    vd_attn_shape ash = gpt2_attn_shape(&m->config, B, T, m->last_pos);
    be->attention_forward(a.atty, a.att, a.qkv, a.qkv + C, a.qkv + 2 * C, &ash);
    vd_linear_forward(ad, be, gpt2_module(m, l, 1), m->proj_out, a.atty, gpt2_w(m, l, 1), p->attprojb + (size_t)l * C,
                      N, C, C, ctx);
    be->add(a.res2, residual, m->proj_out, NC);
    be->layernorm_forward(a.ln2, a.ln2_mean, a.ln2_rstd, a.res2, p->ln2w + (size_t)l * C, p->ln2b + (size_t)l * C, N,
                          C, eps);
    vd_linear_forward(ad, be, gpt2_module(m, l, 2), a.fch, a.ln2, gpt2_w(m, l, 2), p->fcb + (size_t)l * 4 * C, N, C,
                      4 * C, ctx);
    be->gelu_forward(a.fch_gelu, a.fch, NC * 4);
    vd_linear_forward(ad, be, gpt2_module(m, l, 3), m->proj_out, a.fch_gelu, gpt2_w(m, l, 3),
                      p->fcprojb + (size_t)l * C, N, 4 * C, C, ctx);
    be->add(res3, a.res2, m->proj_out, NC);
}

double vd_gpt2_forward(vd_gpt2 *m, const int32_t *inputs, const int32_t *targets, const int32_t *pos, int32_t nb,
                       const vd_fwd_ctx *ctx) {
    const vd_backend *be = m->be;
    vd_require(m->encoded != NULL && nb >= 1 && nb <= m->B);
    int32_t B = nb, T = m->T, C = m->config.channels, V = m->config.vocab_size;
    int32_t L = m->config.n_layer, N = B * T;
    float eps = m->config.ln_eps;
    vd_gpt2_params *p = &m->params;
    m->last_B = nb;

    be->to_device(m->inputs, inputs, sizeof(int32_t) * (size_t)N);
    /* positions (packed examples restart them): wpe rows and the attention window; NULL = t */
    m->last_pos = NULL;
    if (pos) {
        be->to_device(m->pos, pos, sizeof(int32_t) * (size_t)N);
        m->last_pos = m->pos;
    }
    be->encoder_forward(m->encoded, m->inputs, p->wte, p->wpe, m->last_pos, B, T, C);
    for (int32_t l = 0; l < L; l++) gpt2_block_forward(m, l, B, ctx);
    const float *last = m->residual3 + (size_t)(L - 1) * N * C;
    be->layernorm_forward(m->lnf, m->lnf_mean, m->lnf_rstd, last, p->lnfw, p->lnfb, N, C, eps);
    /* tied LM head: logits = lnf wte^T; in training dlnf (dbuf_a) too, chunk by chunk */
    m->head_dloss = 0.0f;
    if (!targets) return vd_model_head(be, &m->logits, &m->logit_rows, m->lnf, p->wte, NULL, NULL, 0.0f, NULL, N, C, V);
    be->to_device(m->targets, targets, sizeof(int32_t) * (size_t)N);
    double loss = vd_model_head(be, &m->logits, &m->logit_rows, m->lnf, p->wte, m->targets, m->losses, ctx->dloss,
                                ctx->dloss != 0.0f ? m->dbuf_a : NULL, N, C, V);
    m->head_dloss = ctx->dloss;
    return loss;
}

void vd_gpt2_backward(vd_gpt2 *m, float dloss, const vd_fwd_ctx *ctx) {
    const vd_backend *be = m->be;
    int32_t B = m->last_B, T = m->T, C = m->config.channels, V = m->config.vocab_size;
    int32_t L = m->config.n_layer, N = B * T;
    size_t NC = (size_t)N * C;
    vd_gpt2_params *p = &m->params;
    vd_adapter *ad = m->adapter;

    float *dlnf = m->dbuf_a;
    if (m->head_dloss == 0.0f || m->head_dloss != dloss) /* the forward did not take it: recompute */
        vd_model_head(be, &m->logits, &m->logit_rows, m->lnf, p->wte, m->targets, m->losses, dloss, dlnf, N, C, V);
    m->head_dloss = 0.0f;
    be->zero(m->dresidual, sizeof(float) * NC);
    be->layernorm_backward(m->dresidual, dlnf, m->residual3 + (size_t)(L - 1) * NC, p->lnfw, m->lnf_mean,
                           m->lnf_rstd, N, C);
    /* m->dresidual now holds dL/d(output of block l); walk the blocks backwards */
    for (int32_t l = L - 1; l >= 0; l--) {
        /* recompute: rebuild this block's activations (and the adapter's per-module state, which
         * the same calls write again with the same values) from its saved input */
        if (m->recompute) gpt2_block_forward(m, l, B, ctx);
        gpt2_block_acts a = gpt2_block(m, l, B);
        const float *residual = gpt2_block_input(m, l, B);
        float *dfch_gelu = m->dbuf_a, *dfch = m->dbuf_b;
        /* the adapters' gradients need their layers' inputs: ln1, ln2 and GELU(fch) again (one
         * slot each for all blocks; under recompute the block forward above wrote them) */
        int rebuild = !m->recompute;
        if (rebuild && gpt2_module(m, l, 3) >= 0) be->gelu_forward(a.fch_gelu, a.fch, NC * 4);
        vd_linear_backward(ad, be, gpt2_module(m, l, 3), dfch_gelu, m->dresidual, a.fch_gelu,
                           gpt2_w(m, l, 3), N, 4 * C, C, ctx);
        be->gelu_backward(dfch, a.fch, dfch_gelu, NC * 4);
        float *dln2 = m->dbuf_a;
        if (rebuild && gpt2_module(m, l, 2) >= 0)
            be->layernorm_forward(a.ln2, a.ln2_mean, a.ln2_rstd, a.res2, p->ln2w + (size_t)l * C,
                                  p->ln2b + (size_t)l * C, N, C, m->config.ln_eps);
        vd_linear_backward(ad, be, gpt2_module(m, l, 2), dln2, dfch, a.ln2, gpt2_w(m, l, 2), N, C,
                           4 * C, ctx);
        be->layernorm_backward(m->dresidual, dln2, a.res2, p->ln2w + (size_t)l * C, a.ln2_mean, a.ln2_rstd, N, C);
        float *datty = m->dbuf_a;
        vd_linear_backward(ad, be, gpt2_module(m, l, 1), datty, m->dresidual, a.atty, gpt2_w(m, l, 1),
                           N, C, C, ctx);
        vd_attn_shape ash = gpt2_attn_shape(&m->config, B, T, m->last_pos);
        be->attention_backward(m->dqkv, m->dqkv + C, m->dqkv + 2 * C, m->datt, datty, a.qkv, a.qkv + C, a.qkv + 2 * C,
                               a.att, &ash);
        /* block 0's input is the frozen embedding's output: no gradient below c_attn's adapter */
        float *dln1 = l == 0 ? NULL : m->dbuf_a;
        if (rebuild && gpt2_module(m, l, 0) >= 0)
            be->layernorm_forward(a.ln1, a.ln1_mean, a.ln1_rstd, residual, p->ln1w + (size_t)l * C,
                                  p->ln1b + (size_t)l * C, N, C, m->config.ln_eps);
        vd_linear_backward(ad, be, gpt2_module(m, l, 0), dln1, m->dqkv, a.ln1, gpt2_w(m, l, 0), N, C,
                           3 * C, ctx);
        if (l == 0) break;
        be->layernorm_backward(m->dresidual, dln1, residual, p->ln1w + (size_t)l * C, a.ln1_mean, a.ln1_rstd, N, C);
    }
}

void vd_gpt2_free(vd_gpt2 *m) {
    const vd_backend *be = m->be;
    if (m->lin_memory) be->free(m->lin_memory);
    float *bufs[] = {m->params_memory, m->encoded, m->ln1, m->ln1_mean, m->ln1_rstd, m->qkv, m->atty, m->att,
                     m->residual2, m->ln2, m->ln2_mean, m->ln2_rstd, m->fch, m->fch_gelu, m->residual3, m->lnf,
                     m->lnf_mean, m->lnf_rstd, m->logits, m->losses, m->dresidual, m->dbuf_a, m->dbuf_b,
                     m->dqkv, m->datt, m->proj_out};
    for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++)
        if (bufs[i]) be->free(bufs[i]);
    if (m->inputs) be->free(m->inputs);
    if (m->targets) be->free(m->targets);
    if (m->pos) be->free(m->pos);
    memset(m, 0, sizeof(*m));
}

/* ---- generation: the forward above for new tokens of one sequence, keys and values cached ---- */

void vd_gpt2_kv_alloc(const vd_gpt2 *m, vd_kv_cache *kv, int32_t max_T) {
    const vd_backend *be = m->be;
    size_t T = (size_t)max_T, L = (size_t)m->config.n_layer, C = (size_t)m->config.channels;
    kv->kv_width = 3 * m->config.channels;
    kv->k = be->alloc(sizeof(float) * L * T * 3 * C); /* the fused qkv rows: q is read from here too */
    kv->x = be->alloc(sizeof(float) * T * C);
    kv->xn = be->alloc(sizeof(float) * T * C);
    kv->atty = be->alloc(sizeof(float) * T * C);
    kv->h1 = be->alloc(sizeof(float) * T * 4 * C);
    kv->h2 = be->alloc(sizeof(float) * T * 4 * C);
    kv->proj = be->alloc(sizeof(float) * T * C);
    kv->mean = be->alloc(sizeof(float) * T);
    kv->rstd = be->alloc(sizeof(float) * T);
    kv->xf = be->alloc(sizeof(float) * C);
    kv->xf_mean = be->alloc(sizeof(float));
    kv->xf_rstd = be->alloc(sizeof(float));
    kv->logits = be->alloc(sizeof(float) * (size_t)m->config.vocab_size);
}

void vd_gpt2_decode(vd_gpt2 *m, vd_kv_cache *kv, const int32_t *tokens, int32_t n, int32_t pos0, float *logits_host) {
    const vd_backend *be = m->be;
    int32_t C = m->config.channels, V = m->config.vocab_size, L = m->config.n_layer;
    float eps = m->config.ln_eps;
    const vd_gpt2_params *p = &m->params;
    vd_adapter *ad = m->adapter;
    if (ad && ad->N < n) vd_die("internal: adapter activations hold %d tokens, decode of %d", (int)ad->N, (int)n);
    const vd_fwd_ctx ctx = {0, 0, 0}; /* eval: no dropout */
    size_t NC = (size_t)n * C, layer_rows = (size_t)kv->max_T * 3 * C;

    be->to_device(kv->tokens, tokens, sizeof(int32_t) * (size_t)n);
    be->encoder_forward(kv->x, kv->tokens, p->wte, p->wpe, kv->pos + pos0, 1, n, C);
    for (int32_t l = 0; l < L; l++) {
        float *cache = kv->k + (size_t)l * layer_rows, *qkv = cache + (size_t)pos0 * 3 * C;
        be->layernorm_forward(kv->xn, kv->mean, kv->rstd, kv->x, p->ln1w + (size_t)l * C, p->ln1b + (size_t)l * C, n,
                              C, eps);
        vd_linear_forward(ad, be, gpt2_module(m, l, 0), qkv, kv->xn, gpt2_w(m, l, 0),
                          p->qkvb + (size_t)l * 3 * C, n, C, 3 * C, &ctx);
        vd_attn_shape ash = gpt2_attn_shape(&m->config, 1, n, NULL);
        be->attention_cached(kv->atty, qkv, cache + C, cache + 2 * C, n, pos0, &ash);
        vd_linear_forward(ad, be, gpt2_module(m, l, 1), kv->proj, kv->atty, gpt2_w(m, l, 1),
                          p->attprojb + (size_t)l * C, n, C, C, &ctx);
        be->accumulate(kv->x, kv->proj, NC);
        be->layernorm_forward(kv->xn, kv->mean, kv->rstd, kv->x, p->ln2w + (size_t)l * C, p->ln2b + (size_t)l * C, n,
                              C, eps);
        vd_linear_forward(ad, be, gpt2_module(m, l, 2), kv->h1, kv->xn, gpt2_w(m, l, 2),
                          p->fcb + (size_t)l * 4 * C, n, C, 4 * C, &ctx);
        be->gelu_forward(kv->h2, kv->h1, NC * 4);
        vd_linear_forward(ad, be, gpt2_module(m, l, 3), kv->proj, kv->h2, gpt2_w(m, l, 3),
                          p->fcprojb + (size_t)l * C, n, 4 * C, C, &ctx);
        be->accumulate(kv->x, kv->proj, NC);
    }
    /* only the last position's logits are needed to pick the next token */
    be->layernorm_forward(kv->xf, kv->xf_mean, kv->xf_rstd, kv->x + (size_t)(n - 1) * C, p->lnfw, p->lnfb, 1, C, eps);
    be->gemm(0, 1, 1, V, C, 1.0f, kv->xf, C, p->wte, C, 0.0f, kv->logits, V);
    be->to_host(logits_host, kv->logits, sizeof(float) * (size_t)V);
}
