/* llama.c: the Llama family (transformers' LlamaForCausalLM; MistralForCausalLM and
 * Qwen2ForCausalLM are the same network with other defaults): RMSNorm, RoPE (rotate_half),
 * grouped-query attention, SwiGLU MLP, optional q/k/v, o and MLP biases, tied or untied head.
 * One table (k_params) names every tensor and its shape; it drives loading, saving, random
 * init and the fingerprint. Linear weights are transposed at load to in x out, the layout
 * every family keeps on the backend (model.h), and transposed back when saved. */
#include "vera/model.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vera/adapter.h"
#include "vera/backend.h"
#include "vera/common.h"
#include "vera/prng.h"
#include "vera/safetensors.h"
#include "vera/weights.h"

#define LLAMA_PI 3.14159265358979323846

/* ---- the family: names and shapes ---- */

enum { K_Q, K_K, K_V, K_O, K_GATE, K_UP, K_DOWN, K_COUNT };

static int32_t llama_q(const vd_model_config *c) { return c->n_head * c->head_dim; }
static int32_t llama_kv(const vd_model_config *c) { return c->n_kv_head * c->head_dim; }

static void llama_kind_shape(const vd_model_config *c, int32_t kind, int32_t *in, int32_t *out) {
    int32_t C = c->channels, Q = llama_q(c), KV = llama_kv(c), I = c->intermediate;
    switch (kind) {
    case K_Q: *in = C; *out = Q; break;
    case K_K: case K_V: *in = C; *out = KV; break;
    case K_O: *in = Q; *out = C; break;
    case K_GATE: case K_UP: *in = C; *out = I; break;
    default: *in = I; *out = C; break;
    }
}

/* Dimensions the table refers to, and when a tensor exists. */
typedef enum { D_NONE, D_V, D_C, D_Q, D_KV, D_I } llama_dim;
typedef enum { P_ALWAYS, P_QKV_BIAS, P_O_BIAS, P_MLP_BIAS, P_UNTIED } llama_presence;

typedef struct {
    const char *name;      /* HF name; per-layer ones after "model.layers.%d." */
    int per_layer;
    llama_dim rows, cols;  /* HF shape (rows, cols); cols D_NONE for vectors */
    int transpose;         /* stored (cols, rows) here: nn.Linear weights */
    llama_presence when;
} llama_param;

/* In vd_llama_params order. */
static const llama_param k_params[VD_LLAMA_NUM_PARAMS] = {
    {"model.embed_tokens.weight", 0, D_V, D_C, 0, P_ALWAYS},
    {"input_layernorm.weight", 1, D_C, D_NONE, 0, P_ALWAYS},
    {"self_attn.q_proj.weight", 1, D_Q, D_C, 1, P_ALWAYS},
    {"self_attn.q_proj.bias", 1, D_Q, D_NONE, 0, P_QKV_BIAS},
    {"self_attn.k_proj.weight", 1, D_KV, D_C, 1, P_ALWAYS},
    {"self_attn.k_proj.bias", 1, D_KV, D_NONE, 0, P_QKV_BIAS},
    {"self_attn.v_proj.weight", 1, D_KV, D_C, 1, P_ALWAYS},
    {"self_attn.v_proj.bias", 1, D_KV, D_NONE, 0, P_QKV_BIAS},
    {"self_attn.o_proj.weight", 1, D_C, D_Q, 1, P_ALWAYS},
    {"self_attn.o_proj.bias", 1, D_C, D_NONE, 0, P_O_BIAS},
    {"post_attention_layernorm.weight", 1, D_C, D_NONE, 0, P_ALWAYS},
    {"mlp.gate_proj.weight", 1, D_I, D_C, 1, P_ALWAYS},
    {"mlp.gate_proj.bias", 1, D_I, D_NONE, 0, P_MLP_BIAS},
    {"mlp.up_proj.weight", 1, D_I, D_C, 1, P_ALWAYS},
    {"mlp.up_proj.bias", 1, D_I, D_NONE, 0, P_MLP_BIAS},
    {"mlp.down_proj.weight", 1, D_C, D_I, 1, P_ALWAYS},
    {"mlp.down_proj.bias", 1, D_C, D_NONE, 0, P_MLP_BIAS},
    {"model.norm.weight", 0, D_C, D_NONE, 0, P_ALWAYS},
    {"lm_head.weight", 0, D_V, D_C, 0, P_UNTIED},
};

static int64_t llama_dim_of(const vd_model_config *c, llama_dim d) {
    switch (d) {
    case D_V: return c->vocab_size;
    case D_C: return c->channels;
    case D_Q: return llama_q(c);
    case D_KV: return llama_kv(c);
    case D_I: return c->intermediate;
    default: return 1;
    }
}

static int llama_present(const vd_model_config *c, llama_presence p) {
    switch (p) {
    case P_QKV_BIAS: return c->qkv_bias;
    case P_O_BIAS: return c->o_bias;
    case P_MLP_BIAS: return c->mlp_bias;
    case P_UNTIED: return !c->tied;
    default: return 1;
    }
}

/* Elements of one layer's slice (or of the whole tensor if global); 0 when absent. */
static size_t llama_param_slice(const vd_model_config *c, int i) {
    const llama_param *p = &k_params[i];
    if (!llama_present(c, p->when)) return 0;
    return (size_t)llama_dim_of(c, p->rows) * (size_t)llama_dim_of(c, p->cols);
}

static size_t llama_param_count(const vd_model_config *c, int i) {
    return llama_param_slice(c, i) * (k_params[i].per_layer ? (size_t)c->n_layer : 1);
}

static size_t llama_num_params(const vd_model_config *c) {
    size_t n = 0;
    for (int i = 0; i < VD_LLAMA_NUM_PARAMS; i++) n += llama_param_count(c, i);
    return n;
}

const vd_model_family vd_family_llama = {
    .arch = VD_ARCH_LLAMA,
    .name = "llama",
    .n_kinds = K_COUNT,
    .kind_paths = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                   "mlp.up_proj", "mlp.down_proj"},
    .block_path = "model.layers.%d.",
    .fan_in_fan_out = 0,
    .peft_parent_library = "transformers.models.llama.modeling_llama",
    .kind_shape = llama_kind_shape,
    .num_params = llama_num_params,
};

/* Sets the named pointers to addr[i] (k_params order; NULL allowed). */
static void llama_params_set(vd_llama_params *p, float *const addr[VD_LLAMA_NUM_PARAMS]) {
    float **ptrs[VD_LLAMA_NUM_PARAMS] = {&p->embed, &p->attn_norm, &p->wq, &p->bq, &p->wk, &p->bk, &p->wv,
                                         &p->bv, &p->wo, &p->bo, &p->mlp_norm, &p->wg, &p->bg, &p->wu,
                                         &p->bu, &p->wd, &p->bd, &p->norm, &p->lm_head};
    for (int i = 0; i < VD_LLAMA_NUM_PARAMS; i++) *ptrs[i] = addr[i];
}

/* ---- config.json ---- */

static float llama_cfg_float(const cJSON *o, const char *path, const char *key, double dflt, double lo, double hi) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!it || cJSON_IsNull(it)) {
        if (dflt != dflt) vd_die("%s: %s is missing (expected a number in [%g, %g])", path, key, lo, hi);
        return (float)dflt;
    }
    if (!cJSON_IsNumber(it) || !(it->valuedouble >= lo && it->valuedouble <= hi))
        vd_die("%s: %s is not valid (expected a number in [%g, %g])", path, key, lo, hi);
    return (float)it->valuedouble;
}

static int llama_cfg_bool(const cJSON *o, const char *path, const char *key, int dflt) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!it || cJSON_IsNull(it)) return dflt;
    if (!cJSON_IsBool(it)) vd_die("%s: %s is not true or false", path, key);
    return cJSON_IsTrue(it);
}

/* transformers 5 keeps rope settings in rope_parameters; older configs have rope_theta at the
 * top level and scaling in rope_scaling ("type" or "rope_type"). */
static void llama_cfg_rope(const cJSON *root, const char *path, vd_model_config *c) {
    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(root, "rope_parameters");
    if (rp && cJSON_IsNull(rp)) rp = NULL;
    if (rp && !cJSON_IsObject(rp)) vd_die("%s: rope_parameters is not an object", path);
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
    if (rs && cJSON_IsNull(rs)) rs = NULL;
    if (rs && !cJSON_IsObject(rs)) vd_die("%s: rope_scaling is not an object", path);
    const cJSON *theta_src = rp && cJSON_GetObjectItemCaseSensitive(rp, "rope_theta") ? rp : root;
    c->rope_theta = llama_cfg_float(theta_src, path, "rope_theta", 10000.0, 1.0, 1e12);
    const cJSON *sc = rp ? rp : rs;
    const cJSON *type = sc ? cJSON_GetObjectItemCaseSensitive(sc, "rope_type") : NULL;
    if (sc && !type) type = cJSON_GetObjectItemCaseSensitive(sc, "type");
    c->rope_type = VD_ROPE_DEFAULT;
    if (type && !cJSON_IsNull(type)) {
        if (!cJSON_IsString(type)) vd_die("%s: rope_type is not a string", path);
        if (!strcmp(type->valuestring, "llama3")) c->rope_type = VD_ROPE_LLAMA3;
        else if (strcmp(type->valuestring, "default") != 0)
            vd_die("%s: rope_type \"%s\" is not supported (expected \"default\" or \"llama3\")", path, type->valuestring);
    }
    if (c->rope_type == VD_ROPE_LLAMA3) {
        double nan = NAN;
        c->rope_factor = llama_cfg_float(sc, path, "factor", nan, 1e-6, 1e6);
        c->rope_low_freq_factor = llama_cfg_float(sc, path, "low_freq_factor", nan, 1e-6, 1e6);
        c->rope_high_freq_factor = llama_cfg_float(sc, path, "high_freq_factor", nan, 1e-6, 1e6);
        c->rope_original_max_pos = vd_cfg_int(sc, path, "original_max_position_embeddings", -1, 1, 1 << 24);
        if (!(c->rope_high_freq_factor > c->rope_low_freq_factor))
            vd_die("%s: rope high_freq_factor must be larger than low_freq_factor", path);
    }
}

void vd_llama_config_from_json(const cJSON *root, const char *path, const char *arch, vd_model_config *c) {
    memset(c, 0, sizeof(*c));
    c->arch = VD_ARCH_LLAMA;
    snprintf(c->hf_architecture, sizeof(c->hf_architecture), "%s", arch);
    int qwen2 = !strcmp(arch, "Qwen2ForCausalLM"), mistral = !strcmp(arch, "MistralForCausalLM");
    c->n_layer = vd_cfg_int(root, path, "num_hidden_layers", -1, 1, 1024);
    c->n_head = vd_cfg_int(root, path, "num_attention_heads", -1, 1, 4096);
    c->n_kv_head = vd_cfg_int(root, path, "num_key_value_heads", c->n_head, 1, 4096);
    c->channels = vd_cfg_int(root, path, "hidden_size", -1, 1, 1 << 20);
    c->intermediate = vd_cfg_int(root, path, "intermediate_size", -1, 1, 1 << 22);
    c->vocab_size = vd_cfg_int(root, path, "vocab_size", -1, 1, 1 << 24);
    c->max_seq_len = vd_cfg_int(root, path, "max_position_embeddings", 2048, 1, 1 << 24);
    if (c->n_head % c->n_kv_head != 0)
        vd_die("%s: num_attention_heads %d is not a multiple of num_key_value_heads %d", path, (int)c->n_head,
               (int)c->n_kv_head);
    int32_t hd_default = c->channels % c->n_head == 0 ? c->channels / c->n_head : -1;
    c->head_dim = vd_cfg_int(root, path, "head_dim", hd_default, 2, 1 << 16);
    if (c->head_dim % 2 != 0) vd_die("%s: head_dim %d is odd (RoPE rotates pairs)", path, (int)c->head_dim);
    c->ln_eps = llama_cfg_float(root, path, "rms_norm_eps", 1e-6, 1e-30, 1.0);
    /* Llama and Mistral default to untied heads, as their config classes do; Qwen2 too */
    c->tied = llama_cfg_bool(root, path, "tie_word_embeddings", 0);
    int attention_bias = llama_cfg_bool(root, path, "attention_bias", 0);
    c->qkv_bias = qwen2 ? 1 : attention_bias;
    c->o_bias = qwen2 ? 0 : attention_bias;
    c->mlp_bias = qwen2 || mistral ? 0 : llama_cfg_bool(root, path, "mlp_bias", 0);
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "hidden_act");
    if (act && !cJSON_IsNull(act) && !(cJSON_IsString(act) && !strcmp(act->valuestring, "silu")))
        vd_die("%s: hidden_act %s is not supported (expected \"silu\")", path,
               cJSON_IsString(act) ? act->valuestring : "(not a string)");
    /* sliding-window attention is not implemented: refuse it rather than compute full attention */
    const cJSON *sw = cJSON_GetObjectItemCaseSensitive(root, "sliding_window");
    int use_sw = qwen2 ? llama_cfg_bool(root, path, "use_sliding_window", 0) : 1;
    if (use_sw && sw && !cJSON_IsNull(sw) && cJSON_IsNumber(sw) && sw->valuedouble < c->max_seq_len)
        vd_die("%s: sliding_window %g is smaller than max_position_embeddings %d (sliding-window attention is not "
               "supported)", path, sw->valuedouble, (int)c->max_seq_len);
    llama_cfg_rope(root, path, c);
}

/* RoPE inverse frequencies (hd/2), as transformers computes them in fp32. */
static void llama_inv_freq(const vd_model_config *c, float *inv) {
    int32_t hd = c->head_dim;
    for (int32_t i = 0; i < hd / 2; i++) {
        float e = (float)(2 * i) / (float)hd;
        inv[i] = 1.0f / powf(c->rope_theta, e);
    }
    if (c->rope_type != VD_ROPE_LLAMA3) return;
    float factor = c->rope_factor, lo = c->rope_low_freq_factor, hi = c->rope_high_freq_factor;
    float old_ctx = (float)c->rope_original_max_pos;
    float low_wavelen = old_ctx / lo, high_wavelen = old_ctx / hi;
    for (int32_t i = 0; i < hd / 2; i++) {
        float wavelen = 2.0f * (float)LLAMA_PI / inv[i];
        float f = wavelen > low_wavelen ? inv[i] / factor : inv[i];
        if (!(wavelen < high_wavelen) && !(wavelen > low_wavelen)) {
            float smooth = (old_ctx / wavelen - lo) / (hi - lo);
            f = (1.0f - smooth) * f / factor + smooth * f;
        }
        inv[i] = f;
    }
}

/* ---- host weights ---- */

static void llama_hf_name(int i, int32_t l, char *out, size_t cap) {
    if (k_params[i].per_layer) snprintf(out, cap, "model.layers.%d.%s", (int)l, k_params[i].name);
    else snprintf(out, cap, "%s", k_params[i].name);
}

/* dst (cols, rows) = src (rows, cols)^T */
static void llama_transpose(float *dst, const float *src, int64_t rows, int64_t cols) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) dst[c * rows + r] = src[r * cols + c];
}

float *vd_llama_load(const char *path, vd_model_config *cfg) {
    vd_weights *w = vd_weights_open(path);
    const cJSON *root = vd_weights_config(w);
    const cJSON *archs = cJSON_GetObjectItemCaseSensitive(root, "architectures");
    const cJSON *a0 = cJSON_IsArray(archs) ? cJSON_GetArrayItem(archs, 0) : NULL;
    vd_llama_config_from_json(root, vd_weights_config_path(w), cJSON_IsString(a0) ? a0->valuestring : "LlamaForCausalLM",
                              cfg);
    size_t total = llama_num_params(cfg);
    float *params = mallocCheck(sizeof(float) * total), *dst = params;
    float *tmp = NULL;
    size_t tmp_cap = 0;
    char name[256];
    for (int i = 0; i < VD_LLAMA_NUM_PARAMS; i++) {
        size_t slice = llama_param_slice(cfg, i);
        if (!slice) continue;
        const llama_param *p = &k_params[i];
        int64_t shape[2] = {llama_dim_of(cfg, p->rows), llama_dim_of(cfg, p->cols)};
        int32_t nd = p->cols == D_NONE ? 1 : 2;
        for (int32_t l = 0; l < (p->per_layer ? cfg->n_layer : 1); l++) {
            llama_hf_name(i, l, name, sizeof(name));
            if (p->transpose) {
                if (tmp_cap < slice) {
                    free(tmp);
                    tmp = mallocCheck(sizeof(float) * slice);
                    tmp_cap = slice;
                }
                vd_weights_read_f32(w, name, nd, shape, tmp);
                llama_transpose(dst, tmp, shape[0], shape[1]);
            } else {
                vd_weights_read_f32(w, name, nd, shape, dst);
            }
            dst += slice;
        }
    }
    vd_require((size_t)(dst - params) == total);
    free(tmp);
    vd_weights_close(w);
    return params;
}

/* Random weights with the init of LlamaPreTrainedModel (N(0, 0.02), norms 1, biases 0). */
void vd_llama_init_random(const vd_model_config *cfg, float *params, uint64_t seed) {
    float *dst = params;
    uint64_t s = seed;
    for (int i = 0; i < VD_LLAMA_NUM_PARAMS; i++) {
        size_t n = llama_param_count(cfg, i);
        int is_norm = k_params[i].cols == D_NONE && strstr(k_params[i].name, "norm") != NULL;
        int is_bias = strstr(k_params[i].name, ".bias") != NULL;
        for (size_t j = 0; j < n; j++) {
            if (is_norm) dst[j] = 1.0f;
            else if (is_bias) dst[j] = 0.0f;
            else {
                /* Box-Muller on the project's mixer: reproducible, no global state */
                uint64_t a = vd_mix64(s += 0x9E3779B97F4A7C15ULL), b = vd_mix64(s += 0x9E3779B97F4A7C15ULL);
                double u1 = ((double)(a >> 11) + 1.0) / 9007199254740993.0, u2 = (double)(b >> 11) / 9007199254740992.0;
                dst[j] = (float)(0.02 * sqrt(-2.0 * log(u1)) * cos(2.0 * LLAMA_PI * u2));
            }
        }
        dst += n;
    }
}

uint64_t vd_llama_fingerprint(const vd_model_config *cfg, const float *params) {
    /* fixed-width fields, not the struct: no padding bytes in the hash */
    uint64_t head[24] = {0};
    float fl[6] = {cfg->ln_eps, cfg->rope_theta, cfg->rope_factor, cfg->rope_low_freq_factor,
                   cfg->rope_high_freq_factor, 0.0f};
    int32_t in[13] = {cfg->max_seq_len, cfg->vocab_size, cfg->n_layer, cfg->n_head,    cfg->channels,
                      cfg->n_kv_head,   cfg->head_dim,   cfg->intermediate, cfg->tied, cfg->qkv_bias,
                      cfg->o_bias,      cfg->mlp_bias,   (int32_t)cfg->rope_type};
    for (int i = 0; i < 13; i++) head[i] = (uint64_t)(int64_t)in[i];
    for (int i = 0; i < 6; i++) {
        uint32_t bits;
        memcpy(&bits, &fl[i], sizeof(bits));
        head[13 + i] = bits;
    }
    head[19] = (uint64_t)cfg->rope_original_max_pos;
    uint64_t h = vd_hash64(head, sizeof(head), 0x6c6c616d61667031ULL /* "llamafp1" */);
    return vd_hash64(params, llama_num_params(cfg) * sizeof(float), h);
}

/* Writes DIR/config.json and DIR/model.safetensors as LlamaForCausalLM.save_pretrained would
 * (F32, HF names and layouts; a tied lm_head left out). */
void vd_llama_save_hf(const char *dir, const vd_model_config *cfg, const float *params) {
    vd_mkdir_p(dir);
    int32_t n = 0;
    for (int i = 0; i < VD_LLAMA_NUM_PARAMS; i++)
        if (llama_param_slice(cfg, i)) n += k_params[i].per_layer ? cfg->n_layer : 1;
    vd_st_entry *e = callocCheck((size_t)n, sizeof(vd_st_entry));
    char (*names)[128] = callocCheck((size_t)n, 128);
    /* only the transposed linear weights need a copy in HF's layout; the rest is written as is */
    size_t n_copy = 0;
    for (int i = 0; i < VD_LLAMA_NUM_PARAMS; i++)
        if (k_params[i].transpose) n_copy += llama_param_count(cfg, i);
    float *copy = mallocCheck(sizeof(float) * (n_copy ? n_copy : 1));
    const float *src = params;
    float *dst = copy;
    int32_t k = 0;
    for (int i = 0; i < VD_LLAMA_NUM_PARAMS; i++) {
        size_t slice = llama_param_slice(cfg, i);
        if (!slice) continue;
        const llama_param *p = &k_params[i];
        int64_t rows = llama_dim_of(cfg, p->rows), cols = llama_dim_of(cfg, p->cols);
        for (int32_t l = 0; l < (p->per_layer ? cfg->n_layer : 1); l++, k++) {
            const float *data = src;
            if (p->transpose) { /* (cols, rows) back to (rows, cols) */
                llama_transpose(dst, src, cols, rows);
                data = dst;
                dst += slice;
            }
            llama_hf_name(i, l, names[k], 128);
            e[k] = p->cols == D_NONE ? (vd_st_entry){names[k], data, 1, {rows}} : (vd_st_entry){names[k], data, 2, {rows, cols}};
            src += slice;
        }
    }
    char path[VD_PATH_MAX + 32];
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    const char *meta[] = {"format", "pt"};
    vd_safetensors_write_f32(path, e, n, meta, 1);
    free(copy);
    free(names);
    free(e);

    cJSON *root = cJSON_CreateObject();
    cJSON *archs = cJSON_AddArrayToObject(root, "architectures");
    cJSON_AddItemToArray(archs, cJSON_CreateString(cfg->hf_architecture[0] ? cfg->hf_architecture : "LlamaForCausalLM"));
    int qwen2 = !strcmp(cfg->hf_architecture, "Qwen2ForCausalLM"), mistral = !strcmp(cfg->hf_architecture, "MistralForCausalLM");
    cJSON_AddStringToObject(root, "model_type", qwen2 ? "qwen2" : mistral ? "mistral" : "llama");
    if (!qwen2) cJSON_AddBoolToObject(root, "attention_bias", cfg->qkv_bias);
    if (!qwen2 && !mistral) cJSON_AddBoolToObject(root, "mlp_bias", cfg->mlp_bias);
    /* MistralConfig defaults to a 4096-token sliding window; this model attends to all positions */
    if (mistral) cJSON_AddNullToObject(root, "sliding_window");
    cJSON_AddStringToObject(root, "hidden_act", "silu");
    cJSON_AddNumberToObject(root, "hidden_size", cfg->channels);
    cJSON_AddNumberToObject(root, "intermediate_size", cfg->intermediate);
    cJSON_AddNumberToObject(root, "num_hidden_layers", cfg->n_layer);
    cJSON_AddNumberToObject(root, "num_attention_heads", cfg->n_head);
    cJSON_AddNumberToObject(root, "num_key_value_heads", cfg->n_kv_head);
    cJSON_AddNumberToObject(root, "head_dim", cfg->head_dim);
    cJSON_AddNumberToObject(root, "max_position_embeddings", cfg->max_seq_len);
    cJSON_AddNumberToObject(root, "vocab_size", cfg->vocab_size);
    char num[32];
    vd_format_float_shortest(num, sizeof(num), cfg->ln_eps);
    cJSON_AddItemToObject(root, "rms_norm_eps", cJSON_CreateRaw(num));
    cJSON_AddBoolToObject(root, "tie_word_embeddings", cfg->tied);
    cJSON *rp = cJSON_AddObjectToObject(root, "rope_parameters");
    vd_format_float_shortest(num, sizeof(num), cfg->rope_theta);
    cJSON_AddItemToObject(rp, "rope_theta", cJSON_CreateRaw(num));
    cJSON_AddStringToObject(rp, "rope_type", cfg->rope_type == VD_ROPE_LLAMA3 ? "llama3" : "default");
    if (cfg->rope_type == VD_ROPE_LLAMA3) {
        float f[3] = {cfg->rope_factor, cfg->rope_low_freq_factor, cfg->rope_high_freq_factor};
        const char *keys[3] = {"factor", "low_freq_factor", "high_freq_factor"};
        for (int i = 0; i < 3; i++) {
            vd_format_float_shortest(num, sizeof(num), f[i]);
            cJSON_AddItemToObject(rp, keys[i], cJSON_CreateRaw(num));
        }
        cJSON_AddNumberToObject(rp, "original_max_position_embeddings", cfg->rope_original_max_pos);
    }
    cJSON_AddStringToObject(root, "torch_dtype", "float32");
    char *json = cJSON_Print(root);
    if (!json) vd_die("out of memory writing config.json");
    snprintf(path, sizeof(path), "%s/config.json", dir);
    vd_write_file_atomic(path, json, strlen(json));
    free(json);
    cJSON_Delete(root);
}

/* ---- the model on a backend ---- */

void vd_llama_init(vd_llama *m, const vd_backend *be, const vd_model_config *cfg, const float *host_params,
                   vd_dtype wdtype, vd_linear_site *sites) {
    memset(m, 0, sizeof(*m));
    m->config = *cfg;
    m->be = be;
    m->num_params = llama_num_params(cfg);
    /* the seven linear weights, by kind: indices into k_params (vd_llama_params order) */
    static const int kind_tensor[K_COUNT] = {2, 4, 6, 8, 11, 13, 15}; /* wq wk wv wo wg wu wd */
    size_t count[VD_LLAMA_NUM_PARAMS], host_off[VD_LLAMA_NUM_PARAMS];
    float *f32[VD_LLAMA_NUM_PARAMS];
    void *lin[VD_LLAMA_NUM_PARAMS];
    uint32_t linear = 0;
    for (int i = 0; i < VD_LLAMA_NUM_PARAMS; i++) count[i] = llama_param_count(cfg, i);
    for (int k = 0; k < K_COUNT; k++) linear |= 1u << kind_tensor[k];
    vd_model_upload(be, host_params, count, VD_LLAMA_NUM_PARAMS, linear, wdtype, &m->params_memory, &m->lin_memory,
                    f32, lin, host_off);
    llama_params_set(&m->params, f32);
    vd_model_fill_sites(&vd_family_llama, cfg, kind_tensor, lin, host_off, wdtype, sites);
    m->sites = sites;
    size_t nf = (size_t)cfg->head_dim / 2;
    float *inv = mallocCheck(sizeof(float) * nf);
    llama_inv_freq(cfg, inv);
    m->inv_freq = be->alloc(sizeof(float) * nf);
    be->to_device(m->inv_freq, inv, sizeof(float) * nf);
    free(inv);
}

/* The attention call of B sequences of T tokens: q, k, v in separate buffers */
static vd_attn_shape llama_attn_shape(const vd_model_config *c, int32_t B, int32_t T, const int32_t *pos) {
    return (vd_attn_shape){B, T, c->n_head, c->n_kv_head, c->head_dim, llama_q(c), llama_kv(c), pos};
}

/* The activation buffers, in one place: allocates them on be when alloc is set, and returns
 * their total bytes either way (the memory estimate: be's attention state, the CPU's when be is
 * NULL). The block's own activations
 * (xn1 .. up) exist once per layer, or once in all under recompute (the backward rebuilds them
 * block by block from resid, which is always kept: it holds every block's input). The adapted
 * layers' inputs that are cheap to rebuild, xn1, xn2 and act, exist once in all: the backward
 * rebuilds them (an RMSNorm, a SwiGLU) where those layers' adapters need their input; the
 * RMSNorm backward itself needs only its input and rstd. */
static size_t llama_acts(vd_llama *m, const vd_backend *be, const vd_model_config *cfg, int32_t B, int32_t T,
                         int recompute, int alloc) {
    const vd_model_config *c = cfg;
    size_t L = (size_t)c->n_layer, C = (size_t)c->channels, Q = (size_t)llama_q(c), KV = (size_t)llama_kv(c);
    size_t I = (size_t)c->intermediate, V = (size_t)c->vocab_size, NH = (size_t)c->n_head, N = (size_t)B * T;
    size_t wide = C > Q ? C : Q;
    if (I > wide) wide = I;
    vd_attn_shape sh = llama_attn_shape(c, B, T, NULL);
    size_t natt = vd_attention_saved_floats(be, &sh); /* the CPU's when be is NULL */
    size_t total = 0;
#define ACT(ptr, count)                                         \
    do {                                                        \
        total += sizeof(float) * (count);                       \
        if (alloc) (ptr) = be->alloc(sizeof(float) * (count));  \
    } while (0)
    ACT(m->resid, (L + 1) * N * C);
    size_t LB = recompute ? 1 : L; /* block slots */
    ACT(m->xn1, N * C);
    ACT(m->rstd1, LB * N);
    ACT(m->q, LB * N * Q);
    ACT(m->k, LB * N * KV);
    ACT(m->v, LB * N * KV);
    ACT(m->att, LB * natt);
    ACT(m->atty, LB * N * Q);
    ACT(m->resid_mid, LB * N * C);
    ACT(m->xn2, N * C);
    ACT(m->rstd2, LB * N);
    ACT(m->gate, LB * N * I);
    ACT(m->up, LB * N * I);
    ACT(m->act, N * I);
    ACT(m->xnf, N * C);
    ACT(m->rstdf, N);
    ACT(m->logits, (N < VD_HEAD_CHUNK ? N : VD_HEAD_CHUNK) * V);
    ACT(m->losses, N);
    ACT(m->dres, N * C);
    ACT(m->dx, N * wide);
    ACT(m->dtmp, N * wide);
    ACT(m->dq, N * Q);
    ACT(m->dk, N * KV);
    ACT(m->dv, N * KV);
    ACT(m->dgate, N * I);
    ACT(m->dup, N * I);
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

void vd_llama_alloc_acts(vd_llama *m, int32_t B, int32_t T) {
    m->B = B;
    m->T = T;
    llama_acts(m, m->be, &m->config, B, T, m->recompute, 1);
}

size_t vd_llama_act_bytes(const vd_model_config *cfg, int32_t B, int32_t T, int recompute, const vd_backend *be) {
    vd_llama scratch;
    return llama_acts(&scratch, be, cfg, B, T, recompute, 0);
}

/* the frozen weight of block l's linear layer `kind` (F32 or BF16) */
static const vd_tensor *llama_w(const vd_llama *m, int32_t l, int32_t kind) { return &m->sites[l * K_COUNT + kind].W; }

static int32_t llama_module(const vd_llama *m, int32_t l, int32_t kind) {
    return m->adapter ? m->adapter->module_of[l * K_COUNT + kind] : -1;
}


/* bias of layer l, or NULL when the model has none */
static const float *llama_bias(const float *b, int32_t l, int32_t n) { return b ? b + (size_t)l * n : NULL; }

/* Block l's activations for a forward of B sequences: layer l's slice, or under recompute the
 * one shared slot every block uses in turn. */
typedef struct {
    float *xn1, *rstd1;       /* (N, C), (N) */
    float *q, *k, *v;         /* (N, Q), (N, KV), (N, KV) after RoPE */
    float *att;               /* attention_saved_floats: the backend's saved state */
    float *atty;              /* (N, Q) */
    float *mid;               /* (N, C) after the attention residual */
    float *xn2, *rstd2;       /* (N, C), (N) */
    float *gate, *up, *act;   /* (N, I); act one slot for every block */
} llama_block_acts;

static llama_block_acts llama_block(const vd_llama *m, int32_t l, int32_t B) {
    const vd_model_config *c = &m->config;
    size_t s = m->recompute ? 0 : (size_t)l, N = (size_t)B * m->T, NC = N * (size_t)c->channels;
    size_t NQ = N * (size_t)llama_q(c), NKV = N * (size_t)llama_kv(c), NI = N * (size_t)c->intermediate;
    vd_attn_shape sh = llama_attn_shape(c, B, m->T, NULL);
    return (llama_block_acts){
        .xn1 = m->xn1, .rstd1 = m->rstd1 + s * N, .q = m->q + s * NQ, .k = m->k + s * NKV,
        .v = m->v + s * NKV, .att = m->att + s * vd_attention_saved_floats(m->be, &sh), .atty = m->atty + s * NQ,
        .mid = m->resid_mid + s * NC, .xn2 = m->xn2, .rstd2 = m->rstd2 + s * N, .gate = m->gate + s * NI,
        .up = m->up + s * NI, .act = m->act};
}

/* The forward of block l on B sequences: resid[l + 1] = block(resid[l]), the block's activations
 * into llama_block(l). The forward and the recompute in the backward both run this, so the
 * recomputed activations are bit for bit the forward's. */
static void llama_block_forward(vd_llama *m, int32_t l, int32_t B, const vd_fwd_ctx *ctx) {
    const vd_backend *be = m->be;
    const vd_model_config *c = &m->config;
    int32_t T = m->T, C = c->channels, Q = llama_q(c), KV = llama_kv(c), I = c->intermediate;
    int32_t N = B * T, NH = c->n_head, NKV = c->n_kv_head, hd = c->head_dim;
    const vd_llama_params *p = &m->params;
    vd_adapter *ad = m->adapter;
    size_t NC = (size_t)N * C;
    vd_attn_shape sh = llama_attn_shape(&m->config, B, m->T, m->last_pos);
    llama_block_acts a = llama_block(m, l, B);
    const float *x = m->resid + (size_t)l * NC;
    /* attention */
    be->rmsnorm_forward(a.xn1, a.rstd1, x, p->attn_norm + (size_t)l * C, N, C, c->ln_eps);
    vd_linear_forward(ad, be, llama_module(m, l, K_Q), a.q, a.xn1, llama_w(m, l, K_Q), llama_bias(p->bq, l, Q), N, C,
                      Q, ctx);
    vd_linear_forward(ad, be, llama_module(m, l, K_K), a.k, a.xn1, llama_w(m, l, K_K), llama_bias(p->bk, l, KV), N,
                      C, KV, ctx);
    vd_linear_forward(ad, be, llama_module(m, l, K_V), a.v, a.xn1, llama_w(m, l, K_V), llama_bias(p->bv, l, KV), N,
                      C, KV, ctx);
    be->rope(a.q, m->inv_freq, m->last_pos, B, T, NH, hd, Q, 0);
    be->rope(a.k, m->inv_freq, m->last_pos, B, T, NKV, hd, KV, 0);
    be->attention_forward(a.atty, a.att, a.q, a.k, a.v, &sh);
    vd_linear_forward(ad, be, llama_module(m, l, K_O), m->proj_out, a.atty, llama_w(m, l, K_O),
                      llama_bias(p->bo, l, C), N, Q, C, ctx);
    be->add(a.mid, x, m->proj_out, NC);
    /* MLP */
    be->rmsnorm_forward(a.xn2, a.rstd2, a.mid, p->mlp_norm + (size_t)l * C, N, C, c->ln_eps);
    vd_linear_forward(ad, be, llama_module(m, l, K_GATE), a.gate, a.xn2, llama_w(m, l, K_GATE),
                      llama_bias(p->bg, l, I), N, C, I, ctx);
    vd_linear_forward(ad, be, llama_module(m, l, K_UP), a.up, a.xn2, llama_w(m, l, K_UP), llama_bias(p->bu, l, I),
                      N, C, I, ctx);
    be->swiglu_forward(a.act, a.gate, a.up, (size_t)N * I);
    vd_linear_forward(ad, be, llama_module(m, l, K_DOWN), m->proj_out, a.act, llama_w(m, l, K_DOWN),
                      llama_bias(p->bd, l, C), N, I, C, ctx);
    be->add(m->resid + (size_t)(l + 1) * NC, a.mid, m->proj_out, NC);
}

double vd_llama_forward(vd_llama *m, const int32_t *inputs, const int32_t *targets, const int32_t *pos, int32_t nb,
                        const vd_fwd_ctx *ctx) {
    const vd_backend *be = m->be;
    vd_require(m->resid != NULL && nb >= 1 && nb <= m->B);
    const vd_model_config *c = &m->config;
    int32_t B = nb, T = m->T, C = c->channels, V = c->vocab_size, L = c->n_layer, N = B * T;
    const vd_llama_params *p = &m->params;
    size_t NC = (size_t)N * C;
    m->last_B = nb;
    /* positions (packed examples restart them): RoPE angles and the attention window; NULL = t */
    m->last_pos = NULL;
    if (pos) {
        be->to_device(m->pos, pos, sizeof(int32_t) * (size_t)N);
        m->last_pos = m->pos;
    }

    be->to_device(m->inputs, inputs, sizeof(int32_t) * (size_t)N);
    be->encoder_forward(m->resid, m->inputs, p->embed, NULL, NULL, B, T, C);
    for (int32_t l = 0; l < L; l++) llama_block_forward(m, l, B, ctx);
    be->rmsnorm_forward(m->xnf, m->rstdf, m->resid + (size_t)L * NC, p->norm, N, C, c->ln_eps);
    const float *head = p->lm_head ? p->lm_head : p->embed;
    /* logits = xnf head^T; in training dxnf (dx) too, chunk by chunk */
    m->head_dloss = 0.0f;
    if (!targets) return vd_model_head(be, &m->logits, &m->logit_rows, m->xnf, head, NULL, NULL, 0.0f, NULL, N, C, V);
    be->to_device(m->targets, targets, sizeof(int32_t) * (size_t)N);
    double loss = vd_model_head(be, &m->logits, &m->logit_rows, m->xnf, head, m->targets, m->losses, ctx->dloss,
                                ctx->dloss != 0.0f ? m->dx : NULL, N, C, V);
    m->head_dloss = ctx->dloss;
    return loss;
}

void vd_llama_backward(vd_llama *m, float dloss, const vd_fwd_ctx *ctx) {
    const vd_backend *be = m->be;
    const vd_model_config *c = &m->config;
    int32_t B = m->last_B, T = m->T, C = c->channels, Q = llama_q(c), KV = llama_kv(c), I = c->intermediate;
    int32_t V = c->vocab_size, L = c->n_layer, N = B * T, NH = c->n_head, NKV = c->n_kv_head, hd = c->head_dim;
    const vd_llama_params *p = &m->params;
    vd_adapter *ad = m->adapter;
    size_t NC = (size_t)N * C;
    vd_attn_shape sh = llama_attn_shape(&m->config, B, m->T, m->last_pos);

    const float *head = p->lm_head ? p->lm_head : p->embed;
    if (m->head_dloss == 0.0f || m->head_dloss != dloss) /* the forward did not take it: recompute */
        vd_model_head(be, &m->logits, &m->logit_rows, m->xnf, head, m->targets, m->losses, dloss, m->dx, N, C, V);
    m->head_dloss = 0.0f;
    be->zero(m->dres, sizeof(float) * NC);
    be->rmsnorm_backward(m->dres, m->dx, m->resid + (size_t)L * NC, p->norm, m->rstdf, N, C);
    /* m->dres holds dL/d(output of block l) */
    for (int32_t l = L - 1; l >= 0; l--) {
        /* recompute: rebuild this block's activations (and the adapter's per-module state, which
         * the same calls write again with the same values) from its saved input */
        if (m->recompute) llama_block_forward(m, l, B, ctx);
        llama_block_acts a = llama_block(m, l, B);
        const float *x = m->resid + (size_t)l * NC;
        /* the adapters' gradients need their layers' inputs: act, xn2 and xn1 again (one slot
         * each for all blocks; under recompute the block forward above wrote them) */
        int rebuild = !m->recompute;
        /* MLP: down, SwiGLU, then gate and up share the normed input */
        if (rebuild && llama_module(m, l, K_DOWN) >= 0) be->swiglu_forward(a.act, a.gate, a.up, (size_t)N * I);
        vd_linear_backward(ad, be, llama_module(m, l, K_DOWN), m->dx, m->dres, a.act, llama_w(m, l, K_DOWN), N, I, C, ctx);
        be->swiglu_backward(m->dgate, m->dup, a.gate, a.up, m->dx, (size_t)N * I);
        if (rebuild && (llama_module(m, l, K_GATE) >= 0 || llama_module(m, l, K_UP) >= 0))
            be->rmsnorm_forward(a.xn2, a.rstd2, a.mid, p->mlp_norm + (size_t)l * C, N, C, m->config.ln_eps);
        vd_linear_backward(ad, be, llama_module(m, l, K_GATE), m->dx, m->dgate, a.xn2, llama_w(m, l, K_GATE), N, C, I, ctx);
        vd_adapter_share_input(ad);
        vd_linear_backward(ad, be, llama_module(m, l, K_UP), m->dtmp, m->dup, a.xn2, llama_w(m, l, K_UP), N, C, I, ctx);
        be->accumulate(m->dx, m->dtmp, NC);
        be->rmsnorm_backward(m->dres, m->dx, a.mid, p->mlp_norm + (size_t)l * C, a.rstd2, N, C);
        /* attention: o_proj, attention, RoPE backwards, then q, k, v share the normed input */
        vd_linear_backward(ad, be, llama_module(m, l, K_O), m->dx, m->dres, a.atty, llama_w(m, l, K_O), N, Q, C, ctx);
        be->attention_backward(m->dq, m->dk, m->dv, m->datt, m->dx, a.q, a.k, a.v, a.att, &sh);
        be->rope(m->dq, m->inv_freq, m->last_pos, B, T, NH, hd, Q, 1);
        be->rope(m->dk, m->inv_freq, m->last_pos, B, T, NKV, hd, KV, 1);
        /* block 0's input is the frozen embedding's output: q, k, v give their adapters'
         * gradients and nothing below */
        float *dxq = l == 0 ? NULL : m->dx, *dxkv = l == 0 ? NULL : m->dtmp;
        if (rebuild && (llama_module(m, l, K_Q) >= 0 || llama_module(m, l, K_K) >= 0 || llama_module(m, l, K_V) >= 0))
            be->rmsnorm_forward(a.xn1, a.rstd1, x, p->attn_norm + (size_t)l * C, N, C, m->config.ln_eps);
        vd_linear_backward(ad, be, llama_module(m, l, K_Q), dxq, m->dq, a.xn1, llama_w(m, l, K_Q), N, C, Q, ctx);
        vd_adapter_share_input(ad);
        vd_linear_backward(ad, be, llama_module(m, l, K_K), dxkv, m->dk, a.xn1, llama_w(m, l, K_K), N, C, KV, ctx);
        if (l > 0) be->accumulate(m->dx, m->dtmp, NC);
        vd_adapter_share_input(ad);
        vd_linear_backward(ad, be, llama_module(m, l, K_V), dxkv, m->dv, a.xn1, llama_w(m, l, K_V), N, C, KV, ctx);
        if (l == 0) break;
        be->accumulate(m->dx, m->dtmp, NC);
        be->rmsnorm_backward(m->dres, m->dx, x, p->attn_norm + (size_t)l * C, a.rstd1, N, C);
    }
}

void vd_llama_free(vd_llama *m) {
    const vd_backend *be = m->be;
    if (m->lin_memory) be->free(m->lin_memory);
    float *bufs[] = {m->params_memory, m->inv_freq, m->resid, m->xn1, m->rstd1, m->q, m->k, m->v, m->att, m->atty,
                     m->resid_mid, m->xn2, m->rstd2, m->gate, m->up, m->act, m->xnf, m->rstdf, m->logits,
                     m->losses, m->dres, m->dx, m->dtmp, m->dq, m->dk, m->dv, m->dgate, m->dup, m->datt,
                     m->proj_out};
    for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++)
        if (bufs[i]) be->free(bufs[i]);
    if (m->inputs) be->free(m->inputs);
    if (m->targets) be->free(m->targets);
    if (m->pos) be->free(m->pos);
    memset(m, 0, sizeof(*m));
}

/* ---- generation: the forward above for new tokens of one sequence, keys and values cached ---- */

void vd_llama_kv_alloc(const vd_llama *m, vd_kv_cache *kv, int32_t max_T) {
    const vd_backend *be = m->be;
    const vd_model_config *c = &m->config;
    size_t T = (size_t)max_T, L = (size_t)c->n_layer, C = (size_t)c->channels, Q = (size_t)llama_q(c);
    size_t KV = (size_t)llama_kv(c), I = (size_t)c->intermediate;
    kv->kv_width = llama_kv(c);
    kv->k = be->alloc(sizeof(float) * L * T * KV);
    kv->v = be->alloc(sizeof(float) * L * T * KV);
    kv->x = be->alloc(sizeof(float) * T * C);
    kv->xn = be->alloc(sizeof(float) * T * C);
    kv->q = be->alloc(sizeof(float) * T * Q);
    kv->atty = be->alloc(sizeof(float) * T * Q);
    kv->h1 = be->alloc(sizeof(float) * T * I);
    kv->h2 = be->alloc(sizeof(float) * T * I);
    kv->h3 = be->alloc(sizeof(float) * T * I);
    kv->proj = be->alloc(sizeof(float) * T * C);
    kv->rstd = be->alloc(sizeof(float) * T);
    kv->xf = be->alloc(sizeof(float) * C);
    kv->xf_rstd = be->alloc(sizeof(float));
    kv->logits = be->alloc(sizeof(float) * (size_t)c->vocab_size);
}

void vd_llama_decode(vd_llama *m, vd_kv_cache *kv, const int32_t *tokens, int32_t n, int32_t pos0, float *logits_host) {
    const vd_backend *be = m->be;
    const vd_model_config *c = &m->config;
    int32_t C = c->channels, Q = llama_q(c), KV = llama_kv(c), I = c->intermediate, V = c->vocab_size;
    int32_t L = c->n_layer, NH = c->n_head, NKV = c->n_kv_head, hd = c->head_dim;
    const vd_llama_params *p = &m->params;
    vd_adapter *ad = m->adapter;
    if (ad && ad->N < n) vd_die("internal: adapter activations hold %d tokens, decode of %d", (int)ad->N, (int)n);
    const vd_fwd_ctx ctx = {0, 0, 0}; /* eval: no dropout */
    size_t NC = (size_t)n * C, layer_rows = (size_t)kv->max_T * KV;
    const int32_t *pos = kv->pos + pos0; /* RoPE angles of the new rows */
    vd_attn_shape sh = llama_attn_shape(c, 1, n, NULL);

    be->to_device(kv->tokens, tokens, sizeof(int32_t) * (size_t)n);
    be->encoder_forward(kv->x, kv->tokens, p->embed, NULL, pos, 1, n, C);
    for (int32_t l = 0; l < L; l++) {
        float *kc = kv->k + (size_t)l * layer_rows, *vc = kv->v + (size_t)l * layer_rows;
        float *knew = kc + (size_t)pos0 * KV, *vnew = vc + (size_t)pos0 * KV;
        /* attention: the new keys and values go straight into the cache */
        be->rmsnorm_forward(kv->xn, kv->rstd, kv->x, p->attn_norm + (size_t)l * C, n, C, c->ln_eps);
        vd_linear_forward(ad, be, llama_module(m, l, K_Q), kv->q, kv->xn, llama_w(m, l, K_Q),
                          llama_bias(p->bq, l, Q), n, C, Q, &ctx);
        vd_linear_forward(ad, be, llama_module(m, l, K_K), knew, kv->xn, llama_w(m, l, K_K),
                          llama_bias(p->bk, l, KV), n, C, KV, &ctx);
        vd_linear_forward(ad, be, llama_module(m, l, K_V), vnew, kv->xn, llama_w(m, l, K_V),
                          llama_bias(p->bv, l, KV), n, C, KV, &ctx);
        be->rope(kv->q, m->inv_freq, pos, 1, n, NH, hd, Q, 0);
        be->rope(knew, m->inv_freq, pos, 1, n, NKV, hd, KV, 0);
        be->attention_cached(kv->atty, kv->q, kc, vc, n, pos0, &sh);
        vd_linear_forward(ad, be, llama_module(m, l, K_O), kv->proj, kv->atty, llama_w(m, l, K_O),
                          llama_bias(p->bo, l, C), n, Q, C, &ctx);
        be->accumulate(kv->x, kv->proj, NC);
        /* MLP */
        be->rmsnorm_forward(kv->xn, kv->rstd, kv->x, p->mlp_norm + (size_t)l * C, n, C, c->ln_eps);
        vd_linear_forward(ad, be, llama_module(m, l, K_GATE), kv->h1, kv->xn, llama_w(m, l, K_GATE),
                          llama_bias(p->bg, l, I), n, C, I, &ctx);
        vd_linear_forward(ad, be, llama_module(m, l, K_UP), kv->h2, kv->xn, llama_w(m, l, K_UP),
                          llama_bias(p->bu, l, I), n, C, I, &ctx);
        be->swiglu_forward(kv->h3, kv->h1, kv->h2, (size_t)n * I);
        vd_linear_forward(ad, be, llama_module(m, l, K_DOWN), kv->proj, kv->h3, llama_w(m, l, K_DOWN),
                          llama_bias(p->bd, l, C), n, I, C, &ctx);
        be->accumulate(kv->x, kv->proj, NC);
    }
    /* only the last position's logits are needed to pick the next token */
    be->rmsnorm_forward(kv->xf, kv->xf_rstd, kv->x + (size_t)(n - 1) * C, p->norm, 1, C, c->ln_eps);
    const float *head = p->lm_head ? p->lm_head : p->embed;
    be->gemm(0, 1, 1, V, C, 1.0f, kv->xf, C, head, C, 0.0f, kv->logits, V);
    be->to_host(logits_host, kv->logits, sizeof(float) * (size_t)V);
}
