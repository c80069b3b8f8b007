/* model.c: the model seam. Picks the family from the file (config.json "architectures", a
 * GGUF file, an llm.c .bin), dispatches to it, lists its adaptable linear sites, and parses
 * target_modules against the family's names. Nothing outside src/model/ knows a family's
 * layer names or shapes. */
#define _POSIX_C_SOURCE 200809L
#include "vera/model.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "vera/adapter.h"
#include "vera/backend.h"
#include "vera/common.h"
#include "vera/weights.h"

/* ---- families ---- */

const vd_model_family *vd_model_family_of(vd_arch arch) {
    return arch == VD_ARCH_LLAMA ? &vd_family_llama : &vd_family_gpt2;
}

/* HF "architectures" entries we compute exactly, and their family. */
static const struct { const char *hf; vd_arch arch; } k_architectures[] = {
    {"GPT2LMHeadModel", VD_ARCH_GPT2},
    {"LlamaForCausalLM", VD_ARCH_LLAMA},
    {"MistralForCausalLM", VD_ARCH_LLAMA},
    {"Qwen2ForCausalLM", VD_ARCH_LLAMA},
};
#define N_ARCHITECTURES ((int)(sizeof(k_architectures) / sizeof(k_architectures[0])))

const vd_model_family *vd_model_family_by_hf_name(const char *a) {
    for (int i = 0; i < N_ARCHITECTURES; i++)
        if (!strcmp(a, k_architectures[i].hf)) return vd_model_family_of(k_architectures[i].arch);
    return NULL;
}

void vd_model_site_name(const vd_model_family *f, int32_t layer, int32_t kind, char *out, size_t cap) {
    char prefix[64];
    snprintf(prefix, sizeof(prefix), f->block_path, (int)layer);
    snprintf(out, cap, "%s%s", prefix, f->kind_paths[kind]);
}

/* ---- reading a model ---- */

typedef enum { SRC_HF_DIR, SRC_GGUF, SRC_LLMC } model_source;

static model_source model_source_of(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0)
        vd_die("model %s: does not exist (expected a Hugging Face directory, a .gguf file or an llm.c .bin file)", path);
    if (S_ISDIR(st.st_mode)) return SRC_HF_DIR;
    if (!S_ISREG(st.st_mode))
        vd_die("model %s: not a regular file or directory (it is %s; expected a Hugging Face directory, a .gguf file "
               "or an llm.c .bin file)", path, vd_file_type_name((unsigned)st.st_mode));
    FILE *f = fopenCheck(path, "rb");
    char magic[4] = {0};
    size_t got = fread(magic, 1, 4, f);
    fcloseCheck(f, path);
    if (got == 4 && !memcmp(magic, "GGUF", 4)) return SRC_GGUF;
    size_t n = strlen(path);
    if (n >= 5 && !strcmp(path + n - 5, ".gguf")) return SRC_GGUF; /* let the GGUF reader say what is wrong */
    return SRC_LLMC;
}

/* The architectures entry of a config.json; GPT-2 directories written before "architectures"
 * existed say model_type "gpt2" only. Unsupported ones are refused by name. */
static const vd_model_family *model_family_of_json(const cJSON *root, const char *path, const char **hf_name) {
    const cJSON *archs = cJSON_GetObjectItemCaseSensitive(root, "architectures");
    const cJSON *a0 = cJSON_IsArray(archs) ? cJSON_GetArrayItem(archs, 0) : NULL;
    if (a0 && !cJSON_IsString(a0)) vd_die("%s: architectures[0] is not a string", path);
    if (!a0) {
        const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
        if (cJSON_IsString(mt) && !strcmp(mt->valuestring, "gpt2")) {
            *hf_name = "GPT2LMHeadModel";
            return &vd_family_gpt2;
        }
        if (cJSON_IsString(mt) && !strcmp(mt->valuestring, "llama")) {
            *hf_name = "LlamaForCausalLM";
            return &vd_family_llama;
        }
        vd_die("%s: no architectures entry and model_type is not \"gpt2\" or \"llama\" (expected one of "
               "GPT2LMHeadModel, LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)", path);
    }
    const vd_model_family *f = vd_model_family_by_hf_name(a0->valuestring);
    if (!f)
        vd_die("%s: architecture %s is not supported (expected one of GPT2LMHeadModel, LlamaForCausalLM, "
               "MistralForCausalLM, Qwen2ForCausalLM)", path, a0->valuestring);
    *hf_name = a0->valuestring;
    return f;
}

void vd_model_config_from_json(const cJSON *root, const char *cfg_path, vd_model_config *cfg) {
    const char *hf = NULL;
    const vd_model_family *f = model_family_of_json(root, cfg_path, &hf);
    if (f->arch == VD_ARCH_GPT2) vd_gpt2_config_from_json(root, cfg_path, cfg);
    else vd_llama_config_from_json(root, cfg_path, hf, cfg);
}

void vd_model_read_config(const char *path, vd_model_config *cfg) {
    switch (model_source_of(path)) {
    case SRC_HF_DIR: {
        char cfg_path[VD_PATH_MAX + 16];
        snprintf(cfg_path, sizeof(cfg_path), "%s/config.json", path);
        if (!vd_path_exists(cfg_path))
            vd_die("%s: missing (expected a Hugging Face model directory with config.json)", cfg_path);
        cJSON *root = vd_cfg_read_json(cfg_path);
        vd_model_config_from_json(root, cfg_path, cfg);
        cJSON_Delete(root);
        return;
    }
    case SRC_GGUF: {
        vd_weights *w = vd_weights_open(path);
        vd_model_config_from_json(vd_weights_config(w), vd_weights_config_path(w), cfg);
        vd_weights_close(w);
        return;
    }
    case SRC_LLMC: free(vd_gpt2_load_llmc(path, cfg)); return;
    }
}

float *vd_model_load(const char *path, vd_model_config *cfg) {
    model_source src = model_source_of(path);
    if (src == SRC_LLMC) return vd_gpt2_load_llmc(path, cfg);
    if (src == SRC_GGUF) return vd_llama_load(path, cfg);
    vd_model_read_config(path, cfg);
    return cfg->arch == VD_ARCH_GPT2 ? vd_gpt2_load_hf(path, cfg) : vd_llama_load(path, cfg);
}

uint64_t vd_model_fingerprint(const vd_model_config *cfg, const float *host_params) {
    return cfg->arch == VD_ARCH_GPT2 ? vd_gpt2_fingerprint(cfg, host_params) : vd_llama_fingerprint(cfg, host_params);
}

void vd_model_save_hf(const char *dir, const vd_model_config *cfg, const float *host_params) {
    if (cfg->arch == VD_ARCH_GPT2) vd_gpt2_save_hf(dir, cfg, host_params);
    else vd_llama_save_hf(dir, cfg, host_params);
}

/* ---- the model on a backend ---- */

vd_dtype vd_precision_weight_dtype(const char *precision) {
    return !strcmp(precision, "bf16") ? VD_DTYPE_BF16 : VD_DTYPE_F32;
}

size_t vd_model_linear_params(const vd_model_config *cfg) {
    const vd_model_family *f = vd_model_family_of(cfg->arch);
    size_t n = 0;
    for (int32_t k = 0; k < f->n_kinds; k++) {
        int32_t in, out;
        f->kind_shape(cfg, k, &in, &out);
        n += (size_t)cfg->n_layer * (size_t)in * (size_t)out;
    }
    return n;
}

void vd_model_upload(const vd_backend *be, const float *host, const size_t *count, int n, uint32_t linear,
                     vd_dtype wdtype, float **f32_mem, void **lin_mem, float **f32, void **lin, size_t *host_off) {
    vd_require(wdtype == VD_DTYPE_F32 || wdtype == VD_DTYPE_BF16);
    size_t total = 0, n_lin = 0;
    for (int i = 0; i < n; i++) {
        host_off[i] = total;
        total += count[i];
        if (linear & (1u << i)) n_lin += count[i];
    }
    *lin_mem = NULL;
    if (wdtype == VD_DTYPE_F32) {
        *f32_mem = be->alloc(sizeof(float) * total);
        be->to_device(*f32_mem, host, sizeof(float) * total);
        for (int i = 0; i < n; i++) {
            f32[i] = count[i] ? *f32_mem + host_off[i] : NULL;
            lin[i] = f32[i];
        }
        return;
    }
    /* BF16: the rest compacted into fp32; each linear tensor rounded on the host, then uploaded
     * (one tensor of staging at a time) */
    *f32_mem = be->alloc(sizeof(float) * (total - n_lin));
    *lin_mem = be->alloc(sizeof(uint16_t) * n_lin);
    size_t at32 = 0, at16 = 0, biggest = 0;
    for (int i = 0; i < n; i++)
        if ((linear & (1u << i)) && count[i] > biggest) biggest = count[i];
    uint16_t *stage = mallocCheck(sizeof(uint16_t) * (biggest ? biggest : 1));
    for (int i = 0; i < n; i++) {
        f32[i] = lin[i] = NULL;
        if (!count[i]) continue;
        if (linear & (1u << i)) {
            vd_cpu_bf16_narrow(stage, host + host_off[i], count[i]);
            lin[i] = (uint16_t *)*lin_mem + at16;
            be->to_device(lin[i], stage, sizeof(uint16_t) * count[i]);
            at16 += count[i];
        } else {
            f32[i] = *f32_mem + at32;
            be->to_device(f32[i], host + host_off[i], sizeof(float) * count[i]);
            at32 += count[i];
        }
    }
    free(stage);
}

double vd_model_head(const vd_backend *be, float **logits, int32_t *logit_rows, const float *x, const float *head,
                     const int32_t *targets, float *losses, float dloss, float *dx, int32_t N, int32_t C, int32_t V) {
    if (!targets) {
        if (*logit_rows < N) { /* the full matrix only where a caller reads it */
            be->free(*logits);
            *logits = be->alloc(sizeof(float) * (size_t)N * V);
            *logit_rows = N;
        }
        be->gemm(0, 1, N, V, C, 1.0f, x, C, head, C, 0.0f, *logits, V);
        return 0.0;
    }
    vd_require(*logit_rows >= (N < VD_HEAD_CHUNK ? N : VD_HEAD_CHUNK));
    float *lg = *logits;
    for (int32_t r0 = 0; r0 < N; r0 += VD_HEAD_CHUNK) {
        int32_t rows = N - r0 < VD_HEAD_CHUNK ? N - r0 : VD_HEAD_CHUNK;
        const float *xr = x + (size_t)r0 * C;
        be->gemm(0, 1, rows, V, C, 1.0f, xr, C, head, C, 0.0f, lg, V);
        /* softmax in place; then dlogits in place over it */
        be->softmax_xent_forward(losses + r0, lg, lg, targets + r0, rows, V);
        if (!dx) continue;
        be->softmax_xent_backward(lg, lg, targets + r0, dloss, rows, V);
        be->gemm(0, 0, rows, C, V, 1.0f, lg, V, head, C, 0.0f, dx + (size_t)r0 * C, C);
    }
    return be->sum(losses, (size_t)N);
}

void vd_model_fill_sites(const vd_model_family *f, const vd_model_config *cfg, const int *kind_tensor,
                         void *const *lin, const size_t *host_off, vd_dtype wdtype, vd_linear_site *sites) {
    size_t es = vd_dtype_size(wdtype);
    for (int32_t l = 0; l < cfg->n_layer; l++) {
        for (int32_t kind = 0; kind < f->n_kinds; kind++) {
            vd_linear_site *s = &sites[l * f->n_kinds + kind];
            s->layer = l;
            s->kind = kind;
            f->kind_shape(cfg, kind, &s->in, &s->out);
            vd_model_site_name(f, l, kind, s->name, sizeof(s->name));
            size_t slice = (size_t)s->in * s->out * (size_t)l;
            s->W = (vd_tensor){(char *)lin[kind_tensor[kind]] + es * slice, wdtype, 2, {s->in, s->out}};
            s->host_off = host_off[kind_tensor[kind]] + slice;
        }
    }
}

void vd_model_init_typed(vd_model *m, const vd_backend *be, const vd_model_config *cfg, const float *host_params,
                         vd_dtype wdtype) {
    memset(m, 0, sizeof(*m));
    m->config = *cfg;
    m->family = vd_model_family_of(cfg->arch);
    m->be = be;
    m->num_params = m->family->num_params(cfg);
    m->n_sites = cfg->n_layer * m->family->n_kinds;
    m->sites = callocCheck((size_t)m->n_sites, sizeof(vd_linear_site));
    if (cfg->arch == VD_ARCH_GPT2) {
        m->gpt2 = callocCheck(1, sizeof(vd_gpt2));
        vd_gpt2_init(m->gpt2, be, cfg, host_params, wdtype, m->sites);
    } else {
        m->llama = callocCheck(1, sizeof(vd_llama));
        vd_llama_init(m->llama, be, cfg, host_params, wdtype, m->sites);
    }
}

void vd_model_init(vd_model *m, const vd_backend *be, const vd_model_config *cfg, const float *host_params) {
    vd_model_init_typed(m, be, cfg, host_params, VD_DTYPE_F32);
}

size_t vd_model_act_bytes(const vd_model_config *cfg, int32_t B, int32_t T, int recompute, const vd_backend *be) {
    return cfg->arch == VD_ARCH_GPT2 ? vd_gpt2_act_bytes(cfg, B, T, recompute, be)
                                     : vd_llama_act_bytes(cfg, B, T, recompute, be);
}

void vd_model_set_recompute(vd_model *m, int recompute) {
    /* it decides the activations' shapes: they must not exist yet */
    vd_require(m->gpt2 ? m->gpt2->encoded == NULL : m->llama->resid == NULL);
    if (m->gpt2) m->gpt2->recompute = recompute != 0;
    else m->llama->recompute = recompute != 0;
}

void vd_model_alloc_acts(vd_model *m, int32_t B, int32_t T) {
    if (m->gpt2) vd_gpt2_alloc_acts(m->gpt2, B, T);
    else vd_llama_alloc_acts(m->llama, B, T);
}

void vd_model_set_adapter(vd_model *m, vd_adapter *a) {
    if (m->gpt2) m->gpt2->adapter = a;
    else m->llama->adapter = a;
}

double vd_model_forward(vd_model *m, const int32_t *inputs, const int32_t *targets, const int32_t *pos, int32_t nb,
                        const vd_fwd_ctx *ctx) {
    return m->gpt2 ? vd_gpt2_forward(m->gpt2, inputs, targets, pos, nb, ctx)
                   : vd_llama_forward(m->llama, inputs, targets, pos, nb, ctx);
}

void vd_model_backward(vd_model *m, float dloss, const vd_fwd_ctx *ctx) {
    if (m->gpt2) vd_gpt2_backward(m->gpt2, dloss, ctx);
    else vd_llama_backward(m->llama, dloss, ctx);
}

const float *vd_model_logits(const vd_model *m) { return m->gpt2 ? m->gpt2->logits : m->llama->logits; }

size_t vd_model_site_host_offset(const vd_model *m, int32_t site) { return m->sites[site].host_off; }

void vd_model_free(vd_model *m) {
    if (m->gpt2) vd_gpt2_free(m->gpt2);
    if (m->llama) vd_llama_free(m->llama);
    free(m->gpt2);
    free(m->llama);
    free(m->sites);
    memset(m, 0, sizeof(*m));
}

/* ---- generation ---- */

void vd_model_kv_alloc(const vd_model *m, vd_kv_cache *kv, int32_t max_T) {
    memset(kv, 0, sizeof(*kv));
    if (max_T < 1 || max_T > m->config.max_seq_len)
        vd_die("internal: KV cache of %d positions (the model holds 1 .. %d)", (int)max_T, (int)m->config.max_seq_len);
    kv->max_T = max_T;
    int32_t *pos = mallocCheck(sizeof(int32_t) * (size_t)max_T);
    for (int32_t t = 0; t < max_T; t++) pos[t] = t;
    kv->pos = m->be->alloc(sizeof(int32_t) * (size_t)max_T);
    m->be->to_device(kv->pos, pos, sizeof(int32_t) * (size_t)max_T);
    free(pos);
    kv->tokens = m->be->alloc(sizeof(int32_t) * (size_t)max_T);
    if (m->gpt2) vd_gpt2_kv_alloc(m->gpt2, kv, max_T);
    else vd_llama_kv_alloc(m->llama, kv, max_T);
}

void vd_model_kv_free(const vd_model *m, vd_kv_cache *kv) {
    void *bufs[] = {kv->k, kv->v, kv->pos, kv->tokens, kv->x, kv->xn, kv->q, kv->atty, kv->h1, kv->h2, kv->h3,
                    kv->proj, kv->mean, kv->rstd, kv->xf, kv->xf_mean, kv->xf_rstd, kv->logits};
    for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++)
        if (bufs[i]) m->be->free(bufs[i]);
    memset(kv, 0, sizeof(*kv));
}

void vd_model_decode(vd_model *m, vd_kv_cache *kv, const int32_t *tokens, int32_t n, int32_t pos0, float *logits_host) {
    if (n < 1 || pos0 < 0 || pos0 + n > kv->max_T)
        vd_die("internal: decode of %d tokens at position %d with a cache of %d positions", (int)n, (int)pos0,
               (int)kv->max_T);
    if (m->gpt2) vd_gpt2_decode(m->gpt2, kv, tokens, n, pos0, logits_host);
    else vd_llama_decode(m->llama, kv, tokens, n, pos0, logits_host);
}

/* ---- target_modules ---- */

/* PEFT's rule: a module is targeted when its path equals the name or ends with "." + name. */
static uint32_t targets_match(const vd_model_family *f, const char *name) {
    uint32_t mask = 0;
    size_t ln = strlen(name);
    for (int32_t k = 0; k < f->n_kinds; k++) {
        const char *full = f->kind_paths[k];
        size_t lf = strlen(full);
        if (ln <= lf && !strcmp(full + lf - ln, name) && (ln == lf || full[lf - ln - 1] == '.')) mask |= 1u << k;
    }
    return mask;
}

uint32_t vd_model_parse_targets(const vd_model_family *f, const char *s, char *err, size_t errcap) {
    uint32_t all = (1u << f->n_kinds) - 1, mask = 0;
    if (!strcmp(s, "all") || !strcmp(s, "all-linear")) return all;
    const char *p = s;
    for (;;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        while (len > 0 && (*p == ' ' || *p == '\t')) { p++; len--; }
        while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\t')) len--;
        char item[96];
        if (len == 0 || len >= sizeof(item)) {
            snprintf(err, errcap, "empty or too long entry in '%s'", s);
            return 0;
        }
        memcpy(item, p, len);
        item[len] = 0;
        uint32_t bits = !strcmp(item, "all") || !strcmp(item, "all-linear") ? all : targets_match(f, item);
        if (!bits) {
            char names[256] = "";
            size_t used = 0;
            for (int32_t k = 0; k < f->n_kinds && used < sizeof(names); k++) {
                const char *leaf = strrchr(f->kind_paths[k], '.');
                int w = snprintf(names + used, sizeof(names) - used, "%s%s", k ? ", " : "", leaf ? leaf + 1 : f->kind_paths[k]);
                if (w > 0) used += (size_t)w;
            }
            snprintf(err, errcap, "'%s' selects no %s linear layer (expected all-linear or names among %s)", item,
                     f->name, names);
            return 0;
        }
        mask |= bits;
        if (!end) break;
        p = end + 1;
    }
    return mask;
}

static int targets_cmp(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

/* Sorted by name, the same normal form config.c gives a list (for GPT-2 that is block order,
 * the spelling checkpoints of earlier versions hold). */
void vd_model_format_targets(const vd_model_family *f, uint32_t mask, char *out, size_t cap) {
    if (mask == (1u << f->n_kinds) - 1) {
        snprintf(out, cap, "all");
        return;
    }
    const char *names[VD_MAX_KINDS];
    int n = 0;
    for (int32_t k = 0; k < f->n_kinds; k++)
        if (mask & (1u << k)) names[n++] = f->kind_paths[k];
    qsort(names, (size_t)n, sizeof(names[0]), targets_cmp);
    out[0] = 0;
    size_t used = 0;
    for (int i = 0; i < n; i++) {
        int w = snprintf(out + used, cap - used, "%s%s", used ? "," : "", names[i]);
        if (w < 0 || (size_t)w >= cap - used) break;
        used += (size_t)w;
    }
}

uint32_t vd_model_targets_or_die(const vd_model_family *f, char *target_modules, size_t cap, const char *model_path) {
    char err[512];
    uint32_t mask = vd_model_parse_targets(f, target_modules, err, sizeof(err));
    if (!mask) vd_die("target_modules: %s (model %s is %s)", err, model_path, f->name);
    vd_model_format_targets(f, mask, target_modules, cap);
    return mask;
}
