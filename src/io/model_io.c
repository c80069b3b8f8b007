/* model_io.c: GPT-2 parameters in one contiguous buffer, and Hugging Face directories
 * (config.json + model.safetensors) in and out.
 *
 * The buffer holds the 16 tensors of vd_gpt2_params in order; per-layer tensors are stacked
 * over layers (L, ...). Linear weights keep the Hugging Face Conv1D layout (in x out), so a
 * checkpoint's bytes are copied as they are, never transposed. llm.c model files (.bin) are the
 * second source: their linear weights are nn.Linear's (out x in) and are transposed on load. */
#define _POSIX_C_SOURCE 200809L
#include "vera/model.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "vera/common.h"
#include "vera/prng.h"
#include "vera/safetensors.h"

/* Name of each tensor after "transformer." (and after "h.{l}." for per-layer ones),
 * in vd_gpt2_params order. */
static const char *const k_suffix[VD_GPT2_NUM_PARAMS] = {
    "wte.weight",         "wpe.weight",         "ln_1.weight",        "ln_1.bias",
    "attn.c_attn.weight", "attn.c_attn.bias",   "attn.c_proj.weight", "attn.c_proj.bias",
    "ln_2.weight",        "ln_2.bias",          "mlp.c_fc.weight",    "mlp.c_fc.bias",
    "mlp.c_proj.weight",  "mlp.c_proj.bias",    "ln_f.weight",        "ln_f.bias",
};

enum { VD_P_WTE = 0, VD_P_WPE = 1, VD_P_LAYER_FIRST = 2, VD_P_LAYER_LAST = 13, VD_P_LNFW = 14, VD_P_LNFB = 15 };

static int vd_param_is_per_layer(int which) { return which >= VD_P_LAYER_FIRST && which <= VD_P_LAYER_LAST; }

/* Shape of tensor `which` as stored in the checkpoint (one layer's slice for per-layer ones).
 * Returns ndim. */
static int vd_gpt2_param_shape(const vd_gpt2_config *cfg, int which, int64_t shape[2]) {
    int64_t C = cfg->channels, V = cfg->vocab_size, T = cfg->max_seq_len;
    switch (which) {
    case 0:  shape[0] = V;     shape[1] = C;     return 2; /* wte */
    case 1:  shape[0] = T;     shape[1] = C;     return 2; /* wpe */
    case 4:  shape[0] = C;     shape[1] = 3 * C; return 2; /* c_attn.weight */
    case 5:  shape[0] = 3 * C;                   return 1;
    case 6:  shape[0] = C;     shape[1] = C;     return 2; /* attn.c_proj.weight */
    case 10: shape[0] = C;     shape[1] = 4 * C; return 2; /* c_fc.weight */
    case 11: shape[0] = 4 * C;                   return 1;
    case 12: shape[0] = 4 * C; shape[1] = C;     return 2; /* mlp.c_proj.weight */
    default: shape[0] = C;                       return 1; /* LayerNorms and C-sized biases */
    }
}

void vd_gpt2_param_sizes(const vd_gpt2_config *cfg, size_t sizes[VD_GPT2_NUM_PARAMS]) {
    for (int i = 0; i < VD_GPT2_NUM_PARAMS; i++) {
        int64_t shape[2];
        int nd = vd_gpt2_param_shape(cfg, i, shape);
        size_t n = (size_t)shape[0] * (nd == 2 ? (size_t)shape[1] : 1);
        sizes[i] = vd_param_is_per_layer(i) ? (size_t)cfg->n_layer * n : n;
    }
}

size_t vd_gpt2_num_params(const vd_gpt2_config *cfg) {
    size_t sizes[VD_GPT2_NUM_PARAMS], total = 0;
    vd_gpt2_param_sizes(cfg, sizes);
    for (int i = 0; i < VD_GPT2_NUM_PARAMS; i++) total += sizes[i];
    return total;
}

void vd_gpt2_params_set(vd_gpt2_params *p, float *const addr[VD_GPT2_NUM_PARAMS]) {
    float **ptrs[VD_GPT2_NUM_PARAMS] = {
        &p->wte,  &p->wpe,  &p->ln1w, &p->ln1b, &p->qkvw,    &p->qkvb,    &p->attprojw, &p->attprojb,
        &p->ln2w, &p->ln2b, &p->fcw,  &p->fcb,  &p->fcprojw, &p->fcprojb, &p->lnfw,     &p->lnfb,
    };
    for (int i = 0; i < VD_GPT2_NUM_PARAMS; i++) *ptrs[i] = addr[i];
}

void vd_gpt2_params_point(vd_gpt2_params *p, const vd_gpt2_config *cfg, float *buf) {
    size_t sizes[VD_GPT2_NUM_PARAMS];
    vd_gpt2_param_sizes(cfg, sizes);
    float *addr[VD_GPT2_NUM_PARAMS];
    for (int i = 0; i < VD_GPT2_NUM_PARAMS; i++) {
        addr[i] = buf;
        buf += sizes[i];
    }
    vd_gpt2_params_set(p, addr);
}

void vd_gpt2_param_name(int which, int32_t l, char *out, size_t cap) {
    vd_require(which >= 0 && which < VD_GPT2_NUM_PARAMS);
    int n = vd_param_is_per_layer(which) ? snprintf(out, cap, "transformer.h.%d.%s", (int)l, k_suffix[which])
                                         : snprintf(out, cap, "transformer.%s", k_suffix[which]);
    vd_require(n >= 0 && (size_t)n < cap);
}

/* ----------------------------------------------------------------------------------------- */
/* paths and small files */

/* dir + "/" + name, without doubling a trailing slash; dies if the result is too long. */
static void vd_path_join(char *out, size_t cap, const char *dir, const char *name) {
    size_t len = strlen(dir);
    while (len > 1 && dir[len - 1] == '/') len--;
    int n = snprintf(out, cap, "%.*s/%s", (int)len, dir, name);
    if (n < 0 || (size_t)n >= cap) vd_die("%s/%s: path too long (expected under %zu bytes)", dir, name, cap);
}

/* Reads a small text file whole (NUL-terminated). config.json is a few KB; a huge one is not
 * a config file, so refuse it rather than allocate for it. */
char *vd_read_small_file(const char *path, size_t *len_out) {
    FILE *f = fopenCheck(path, "rb");
    if (fseek(f, 0, SEEK_END) != 0) vd_die("%s: cannot seek (%s)", path, strerror(errno));
    long size = ftell(f);
    if (size < 0) vd_die("%s: cannot tell size (%s)", path, strerror(errno));
    if (size > (16L << 20)) vd_die("%s: %ld bytes is too large for a config file (expected under 16 MiB)", path, size);
    if (fseek(f, 0, SEEK_SET) != 0) vd_die("%s: cannot seek (%s)", path, strerror(errno));
    char *buf = mallocCheck((size_t)size + 1);
    if (size > 0) freadCheck(buf, 1, (size_t)size, f, path);
    buf[size] = 0;
    fcloseCheck(f, path);
    *len_out = (size_t)size;
    return buf;
}

/* ----------------------------------------------------------------------------------------- */
/* config.json */

/* An integer field in [lo, hi]; `dflt` < 0 means required. */
int32_t vd_cfg_int(const cJSON *root, const char *path, const char *key, int64_t dflt, int64_t lo, int64_t hi) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!it || cJSON_IsNull(it)) {
        if (dflt < 0) vd_die("%s: %s is missing (expected an integer in %lld..%lld)", path, key, (long long)lo, (long long)hi);
        return (int32_t)dflt;
    }
    if (!cJSON_IsNumber(it))
        vd_die("%s: %s is not a number (expected an integer in %lld..%lld)", path, key, (long long)lo, (long long)hi);
    double v = it->valuedouble;
    if (!(v >= (double)lo && v <= (double)hi) || v != floor(v))
        vd_die("%s: %s = %.17g is not valid (expected an integer in %lld..%lld)", path, key, v, (long long)lo,
               (long long)hi);
    return (int32_t)v;
}

/* A boolean field that must have `want` for our model to compute what transformers computes. */
void vd_cfg_require_bool(const cJSON *root, const char *path, const char *key, int want, const char *why) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!it || cJSON_IsNull(it)) return; /* absent: transformers' default, which is `want` */
    if (!cJSON_IsBool(it) || cJSON_IsTrue(it) != want)
        vd_die("%s: %s must be %s (%s)", path, key, want ? "true" : "false", why);
}

cJSON *vd_cfg_read_json(const char *path) {
    size_t len;
    char *text = vd_read_small_file(path, &len);
    cJSON *root = cJSON_ParseWithLength(text, len);
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        long off = (at && at >= text && at <= text + len) ? (long)(at - text) : -1;
        free(text);
        vd_die("%s: not valid JSON (parse error near byte %ld; expected a model config.json)", path, off);
    }
    free(text);
    if (!cJSON_IsObject(root)) vd_die("%s: not a JSON object (expected a model config.json)", path);
    return root;
}

void vd_gpt2_config_read_file(const char *path, vd_gpt2_config *cfg) {
    cJSON *root = vd_cfg_read_json(path);
    vd_gpt2_config_from_json(root, path, cfg);
    cJSON_Delete(root);
}

void vd_gpt2_config_from_json(const cJSON *root, const char *path, vd_gpt2_config *cfg) {
    memset(cfg, 0, sizeof(*cfg));
    cfg->arch = VD_ARCH_GPT2;
    snprintf(cfg->hf_architecture, sizeof(cfg->hf_architecture), "GPT2LMHeadModel");
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    if (mt && !(cJSON_IsString(mt) && strcmp(mt->valuestring, "gpt2") == 0))
        vd_die("%s: model_type is %s (expected \"gpt2\": only GPT-2 models are supported)", path,
               cJSON_IsString(mt) ? mt->valuestring : "not a string");

    cfg->n_layer = vd_cfg_int(root, path, "n_layer", -1, 1, 1024);
    cfg->n_head = vd_cfg_int(root, path, "n_head", -1, 1, 4096);
    cfg->channels = vd_cfg_int(root, path, "n_embd", -1, 1, 1 << 20);
    cfg->vocab_size = vd_cfg_int(root, path, "vocab_size", -1, 1, 1 << 24);
    /* n_positions is the modern name; very old configs only have n_ctx (the same number) */
    if (cJSON_GetObjectItemCaseSensitive(root, "n_positions"))
        cfg->max_seq_len = vd_cfg_int(root, path, "n_positions", -1, 1, 1 << 24);
    else
        cfg->max_seq_len = vd_cfg_int(root, path, "n_ctx", -1, 1, 1 << 24);
    if (cfg->channels % cfg->n_head != 0)
        vd_die("%s: n_embd %d is not divisible by n_head %d (expected n_embd %% n_head == 0)", path, cfg->channels,
               cfg->n_head);

    const cJSON *eps = cJSON_GetObjectItemCaseSensitive(root, "layer_norm_epsilon");
    cfg->ln_eps = 1e-5f; /* GPT2Config's default */
    if (eps && !cJSON_IsNull(eps)) {
        if (!cJSON_IsNumber(eps) || !(eps->valuedouble > 0.0 && eps->valuedouble < 1.0))
            vd_die("%s: layer_norm_epsilon is not valid (expected a number in (0, 1), e.g. 1e-05)", path);
        cfg->ln_eps = (float)eps->valuedouble;
    }

    /* Our kernels implement the tanh GELU, which is what both names mean in transformers. */
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "activation_function");
    if (act && !cJSON_IsNull(act)) {
        if (!cJSON_IsString(act) ||
            (strcmp(act->valuestring, "gelu_new") != 0 && strcmp(act->valuestring, "gelu_pytorch_tanh") != 0))
            vd_die("%s: activation_function %s%s%s is not supported (expected \"gelu_new\" or \"gelu_pytorch_tanh\")", path,
                   cJSON_IsString(act) ? "\"" : "", cJSON_IsString(act) ? act->valuestring : "(not a string)",
                   cJSON_IsString(act) ? "\"" : "");
    }
    /* Options that change what the model computes; anything but the default would train a
     * different function than the one transformers loads, silently. */
    const cJSON *inner = cJSON_GetObjectItemCaseSensitive(root, "n_inner");
    if (inner && !cJSON_IsNull(inner) &&
        !(cJSON_IsNumber(inner) && inner->valuedouble == 4.0 * (double)cfg->channels))
        vd_die("%s: n_inner must be null or 4 * n_embd = %d (the MLP width is fixed at 4C)", path, 4 * cfg->channels);
    vd_cfg_require_bool(root, path, "scale_attn_weights", 1, "attention scores are always scaled by 1/sqrt(head dim)");
    vd_cfg_require_bool(root, path, "scale_attn_by_inverse_layer_idx", 0, "per-layer attention scaling is not implemented");
    vd_cfg_require_bool(root, path, "tie_word_embeddings", 1, "the LM head is always tied to wte");
}

/* ----------------------------------------------------------------------------------------- */
/* load */

static void vd_shape_str(char *out, size_t cap, const int64_t *shape, int nd) {
    size_t n = (size_t)snprintf(out, cap, "[");
    for (int d = 0; d < nd && n < cap; d++) n += (size_t)snprintf(out + n, cap - n, "%s%lld", d ? ", " : "", (long long)shape[d]);
    if (n < cap) snprintf(out + n, cap - n, "]");
}

/* Buffers and duplicates transformers keeps in older checkpoints; not parameters. */
static int vd_is_ignored_tensor(const char *name) {
    size_t n = strlen(name);
    const char *ends[] = {".attn.bias", ".attn.masked_bias"};
    for (int i = 0; i < 2; i++) {
        size_t k = strlen(ends[i]);
        if (n >= k && strcmp(name + n - k, ends[i]) == 0) return 1;
    }
    return strcmp(name, "lm_head.weight") == 0; /* tied to wte */
}

float *vd_gpt2_load_hf(const char *dir, vd_gpt2_config *cfg) {
    char cfg_path[VD_PATH_MAX], st_path[VD_PATH_MAX];
    vd_path_join(cfg_path, sizeof(cfg_path), dir, "config.json");
    vd_path_join(st_path, sizeof(st_path), dir, "model.safetensors");
    if (!vd_path_exists(cfg_path))
        vd_die("%s: missing (expected a Hugging Face GPT-2 directory with config.json and model.safetensors)", cfg_path);
    vd_gpt2_config_read_file(cfg_path, cfg);

    if (!vd_path_exists(st_path)) {
        char alt[VD_PATH_MAX];
        vd_path_join(alt, sizeof(alt), dir, "model.safetensors.index.json");
        if (vd_path_exists(alt))
            vd_die("%s: missing; the model is sharded (%s), which is not supported (expected one model.safetensors)",
                   st_path, alt);
        vd_path_join(alt, sizeof(alt), dir, "pytorch_model.bin");
        if (vd_path_exists(alt))
            vd_die("%s: missing; only %s exists (expected safetensors: re-save with save_pretrained(safe_serialization=True))",
                   st_path, alt);
        vd_die("%s: missing (expected the weights next to %s)", st_path, cfg_path);
    }

    vd_safetensors st;
    vd_safetensors_open(&st, st_path);
    uint8_t *used = callocCheck((size_t)(st.n_tensors ? st.n_tensors : 1), 1);
    size_t total = vd_gpt2_num_params(cfg);
    float *params = mallocCheck(total * sizeof(float));
    float *dst = params;
    char name[256], bare[256], have[96], want[96];
    for (int which = 0; which < VD_GPT2_NUM_PARAMS; which++) {
        int32_t layers = vd_param_is_per_layer(which) ? cfg->n_layer : 1;
        int64_t shape[2];
        int nd = vd_gpt2_param_shape(cfg, which, shape);
        for (int32_t l = 0; l < layers; l++) {
            vd_gpt2_param_name(which, l, name, sizeof(name));
            /* the original hub "gpt2" checkpoint names its tensors without "transformer." */
            snprintf(bare, sizeof(bare), "%s", name + strlen("transformer."));
            const vd_st_tensor *t = vd_safetensors_find(&st, name);
            if (!t) t = vd_safetensors_find(&st, bare);
            vd_shape_str(want, sizeof(want), shape, nd);
            if (!t) vd_die("%s: missing tensor %s (also looked for %s; expected shape %s)", st_path, name, bare, want);
            int ok = t->ndim == nd;
            for (int d = 0; ok && d < nd; d++) ok = t->shape[d] == shape[d];
            if (!ok) {
                vd_shape_str(have, sizeof(have), t->shape, t->ndim);
                vd_die("%s: tensor %s has shape %s, expected %s (from %s)", st_path, t->name, have, want, cfg_path);
            }
            vd_safetensors_read_f32(&st, t, dst); /* dies naming the tensor on a non-float dtype */
            dst += vd_st_tensor_numel(t);
            used[t - st.tensors] = 1;
        }
    }
    vd_require((size_t)(dst - params) == total);

    /* Tensors we did not use and do not know: say so once, they may mean the wrong model. */
    int32_t n_unknown = 0;
    const char *first_unknown = NULL;
    for (int32_t i = 0; i < st.n_tensors; i++) {
        if (used[i] || vd_is_ignored_tensor(st.tensors[i].name)) continue;
        if (!first_unknown) first_unknown = st.tensors[i].name;
        n_unknown++;
    }
    if (n_unknown && vd_rank() == 0) /* every rank loads the model: warn once */
        vd_warn("%s: ignoring %d tensor(s) that are not GPT-2 parameters (first: %s)", st_path, n_unknown, first_unknown);
    free(used);
    vd_safetensors_close(&st);
    return params;
}

/* ----------------------------------------------------------------------------------------- */
/* llm.c model files (gpt2_124M.bin, written by llm.c's train_gpt2.py write_model) */

#define VD_LLMC_MAGIC 20240326
#define VD_LLMC_HEADER_INTS 256

/* Reads n parameters of `esize` bytes (4: fp32, 2: bf16) from f into dst as fp32. */
static void vd_llmc_read(FILE *f, const char *path, float *dst, size_t n, int esize, void *scratch) {
    if (esize == 4) {
        freadCheck(dst, sizeof(float), n, f, path);
        return;
    }
    uint16_t *b = scratch;
    freadCheck(b, sizeof(uint16_t), n, f, path);
    for (size_t i = 0; i < n; i++) dst[i] = vd_bf16_to_f32(b[i]); /* tensor.h: exact */
}

/* A header field in [lo, hi], or die naming the file and the field. */
static int32_t vd_llmc_field(const int32_t *h, int idx, const char *name, int64_t lo, int64_t hi, const char *path) {
    int32_t v = h[idx];
    if (v < lo || v > hi)
        vd_die("%s: llm.c header field %d (%s) = %d is not valid (expected %lld..%lld)", path, idx, name, (int)v,
               (long long)lo, (long long)hi);
    return v;
}

float *vd_gpt2_load_llmc(const char *path, vd_gpt2_config *cfg) {
    FILE *f = fopenCheck(path, "rb");
    if (fseek(f, 0, SEEK_END) != 0) vd_die("%s: cannot seek (%s)", path, strerror(errno));
    long fsize = ftell(f);
    if (fsize < 0) vd_die("%s: cannot tell size (%s)", path, strerror(errno));
    if (fseek(f, 0, SEEK_SET) != 0) vd_die("%s: cannot seek (%s)", path, strerror(errno));
    const long header_bytes = VD_LLMC_HEADER_INTS * (long)sizeof(int32_t);
    if (fsize < header_bytes)
        vd_die("%s: truncated: %ld bytes, shorter than the %ld-byte llm.c model header", path, fsize, header_bytes);
    int32_t h[VD_LLMC_HEADER_INTS];
    freadCheck(h, sizeof(int32_t), VD_LLMC_HEADER_INTS, f, path);
    if (h[0] != VD_LLMC_MAGIC)
        vd_die("%s: wrong magic %d (expected %d: an llm.c GPT-2 model file such as gpt2_124M.bin)", path, (int)h[0],
               VD_LLMC_MAGIC);
    if (h[1] != 3 && h[1] != 5)
        vd_die("%s: unsupported llm.c model version %d (expected 3: fp32 or 5: bf16 parameters)", path, (int)h[1]);
    int esize = h[1] == 3 ? 4 : 2;
    memset(cfg, 0, sizeof(*cfg));
    cfg->arch = VD_ARCH_GPT2;
    snprintf(cfg->hf_architecture, sizeof(cfg->hf_architecture), "GPT2LMHeadModel");
    cfg->max_seq_len = vd_llmc_field(h, 2, "max_seq_len", 1, 1 << 24, path);
    cfg->vocab_size = vd_llmc_field(h, 3, "vocab_size", 1, 1 << 24, path);
    cfg->n_layer = vd_llmc_field(h, 4, "num_layers", 1, 1024, path);
    cfg->n_head = vd_llmc_field(h, 5, "num_heads", 1, 4096, path);
    cfg->channels = vd_llmc_field(h, 6, "channels", 1, 1 << 20, path);
    int32_t Vp = vd_llmc_field(h, 7, "padded_vocab_size", cfg->vocab_size, 1 << 24, path);
    cfg->ln_eps = 1e-5f; /* llm.c's LayerNorm epsilon */
    if (cfg->channels % cfg->n_head != 0)
        vd_die("%s: channels %d is not divisible by num_heads %d (expected channels %% num_heads == 0)", path,
               (int)cfg->channels, (int)cfg->n_head);

    /* llm.c's 16 tensors, in its order (= vd_gpt2_params order) with its shapes: linear
     * weights are nn.Linear's (out, in); ours are Conv1D's (in, out). */
    int64_t C = cfg->channels, L = cfg->n_layer;
    size_t sizes[VD_GPT2_NUM_PARAMS];
    vd_gpt2_param_sizes(cfg, sizes);
    /* the file holds Vp rows of wte, we keep V */
    uint64_t file_params = 0;
    for (int i = 0; i < VD_GPT2_NUM_PARAMS; i++) file_params += sizes[i];
    file_params += (uint64_t)(Vp - cfg->vocab_size) * (uint64_t)C;
    uint64_t want = (uint64_t)header_bytes + file_params * (uint64_t)esize;
    if ((uint64_t)fsize != want)
        vd_die("%s: %s: header (version %d, maxT %d, V %d, Vp %d, L %d, NH %d, C %d) needs %llu bytes, file has %ld",
               path, (uint64_t)fsize < want ? "truncated" : "too long", (int)h[1], (int)cfg->max_seq_len,
               (int)cfg->vocab_size, (int)Vp, (int)cfg->n_layer, (int)cfg->n_head, (int)cfg->channels,
               (unsigned long long)want, fsize);

    float *params = mallocCheck(vd_gpt2_num_params(cfg) * sizeof(float));
    /* tmp: the padded wte or one layer's linear weight before the transpose; scratch: the
     * bf16 bits of the largest single read */
    size_t n_tmp = (size_t)Vp * (size_t)C, n_scratch;
    if ((size_t)(4 * C * C) > n_tmp) n_tmp = (size_t)(4 * C * C);
    n_scratch = n_tmp;
    for (int i = 1; i < VD_GPT2_NUM_PARAMS; i++)
        if (i != 4 && i != 6 && i != 10 && i != 12 && sizes[i] > n_scratch) n_scratch = sizes[i];
    float *tmp = mallocCheck(n_tmp * sizeof(float));
    void *scratch = esize == 2 ? mallocCheck(n_scratch * sizeof(uint16_t)) : NULL;
    float *dst = params;
    for (int which = 0; which < VD_GPT2_NUM_PARAMS; which++) {
        /* rows x cols of one layer's linear weight in the file (out x in); 0 = copy as is */
        int64_t rows = 0, cols = 0;
        switch (which) {
        case 4:  rows = 3 * C; cols = C;     break; /* qkvw */
        case 6:  rows = C;     cols = C;     break; /* attprojw */
        case 10: rows = 4 * C; cols = C;     break; /* fcw */
        case 12: rows = C;     cols = 4 * C; break; /* fcprojw */
        default: break;
        }
        if (which == 0) {
            vd_llmc_read(f, path, tmp, (size_t)Vp * (size_t)C, esize, scratch);
            memcpy(dst, tmp, sizes[0] * sizeof(float)); /* rows V..Vp-1 are padding */
        } else if (rows == 0) {
            vd_llmc_read(f, path, dst, sizes[which], esize, scratch);
        } else {
            size_t per = (size_t)(rows * cols);
            for (int64_t l = 0; l < L; l++) {
                vd_llmc_read(f, path, tmp, per, esize, scratch);
                float *o = dst + (size_t)l * per;
                for (int64_t r = 0; r < rows; r++)
                    for (int64_t c = 0; c < cols; c++) o[c * rows + r] = tmp[r * cols + c];
            }
        }
        dst += sizes[which];
    }
    vd_require((size_t)(dst - params) == vd_gpt2_num_params(cfg));
    free(tmp);
    free(scratch);
    fcloseCheck(f, path);
    return params;
}

float *vd_gpt2_load(const char *path, vd_gpt2_config *cfg) {
    struct stat st;
    if (stat(path, &st) != 0)
        vd_die("%s: %s (expected a Hugging Face GPT-2 directory with config.json and model.safetensors, or an "
               "llm.c model file such as gpt2_124M.bin)", path, strerror(errno));
    if (S_ISDIR(st.st_mode)) return vd_gpt2_load_hf(path, cfg);
    if (S_ISREG(st.st_mode)) return vd_gpt2_load_llmc(path, cfg);
    vd_die("%s: neither a directory nor a regular file (expected a Hugging Face GPT-2 directory or an llm.c "
           "model file)", path);
}

/* ----------------------------------------------------------------------------------------- */
/* save */

void vd_gpt2_save_hf(const char *dir, const vd_gpt2_config *cfg, const float *params) {
    vd_mkdir_p(dir);
    char path[VD_PATH_MAX], eps[32];
    vd_format_float_shortest(eps, sizeof(eps), cfg->ln_eps);
    /* GPT-2's end-of-text token is the last id (50256 in the real vocabulary); transformers
     * warns about special-token ids outside a smaller vocabulary, so keep them inside. */
    int32_t eot = cfg->vocab_size > 50257 ? 50256 : cfg->vocab_size - 1;
    /* What GPT2LMHeadModel.save_pretrained writes (transformers 5.x, keys sorted), minus
     * transformers_version. */
    char json[4096];
    int n = snprintf(json, sizeof(json),
                     "{\n"
                     "  \"activation_function\": \"gelu_new\",\n"
                     "  \"add_cross_attention\": false,\n"
                     "  \"architectures\": [\n    \"GPT2LMHeadModel\"\n  ],\n"
                     "  \"attn_pdrop\": 0.1,\n"
                     "  \"bos_token_id\": %d,\n"
                     "  \"dtype\": \"float32\",\n"
                     "  \"embd_pdrop\": 0.1,\n"
                     "  \"eos_token_id\": %d,\n"
                     "  \"initializer_range\": 0.02,\n"
                     "  \"layer_norm_epsilon\": %s,\n"
                     "  \"model_type\": \"gpt2\",\n"
                     "  \"n_embd\": %d,\n"
                     "  \"n_head\": %d,\n"
                     "  \"n_inner\": null,\n"
                     "  \"n_layer\": %d,\n"
                     "  \"n_positions\": %d,\n"
                     "  \"pad_token_id\": null,\n"
                     "  \"reorder_and_upcast_attn\": false,\n"
                     "  \"resid_pdrop\": 0.1,\n"
                     "  \"scale_attn_by_inverse_layer_idx\": false,\n"
                     "  \"scale_attn_weights\": true,\n"
                     "  \"summary_activation\": null,\n"
                     "  \"summary_first_dropout\": 0.1,\n"
                     "  \"summary_proj_to_labels\": true,\n"
                     "  \"summary_type\": \"cls_index\",\n"
                     "  \"summary_use_proj\": true,\n"
                     "  \"tie_word_embeddings\": true,\n"
                     "  \"use_cache\": true,\n"
                     "  \"vocab_size\": %d\n"
                     "}\n",
                     eot, eot, eps, cfg->channels, cfg->n_head, cfg->n_layer, cfg->max_seq_len, cfg->vocab_size);
    vd_require(n > 0 && (size_t)n < sizeof(json));
    vd_path_join(path, sizeof(path), dir, "config.json");
    vd_write_file_atomic(path, json, (size_t)n);

    /* One entry per HF tensor, pointing into the buffer; written in module order
     * (wte, wpe, h.0 ... h.{L-1}, ln_f). */
    size_t sizes[VD_GPT2_NUM_PARAMS], offset[VD_GPT2_NUM_PARAMS];
    vd_gpt2_param_sizes(cfg, sizes);
    offset[0] = 0;
    for (int i = 1; i < VD_GPT2_NUM_PARAMS; i++) offset[i] = offset[i - 1] + sizes[i - 1];
    int32_t n_entries = 4 + 12 * cfg->n_layer;
    vd_st_entry *e = callocCheck((size_t)n_entries, sizeof(vd_st_entry));
    char (*names)[256] = callocCheck((size_t)n_entries, sizeof(*names));
    int32_t k = 0;
    for (int pass = 0; pass < 3; pass++) {
        /* pass 0: wte, wpe; pass 1: the layers; pass 2: ln_f */
        int32_t layers = pass == 1 ? cfg->n_layer : 1;
        for (int32_t l = 0; l < layers; l++) {
            for (int which = 0; which < VD_GPT2_NUM_PARAMS; which++) {
                int in_pass = pass == 0 ? which < VD_P_LAYER_FIRST
                            : pass == 1 ? vd_param_is_per_layer(which)
                                        : which > VD_P_LAYER_LAST;
                if (!in_pass) continue;
                size_t per = vd_param_is_per_layer(which) ? sizes[which] / (size_t)cfg->n_layer : sizes[which];
                vd_gpt2_param_name(which, l, names[k], sizeof(names[k]));
                e[k].name = names[k];
                e[k].data = params + offset[which] + (size_t)l * per;
                e[k].ndim = vd_gpt2_param_shape(cfg, which, e[k].shape);
                k++;
            }
        }
    }
    vd_require(k == n_entries);
    const char *meta[] = {"format", "pt"};
    vd_path_join(path, sizeof(path), dir, "model.safetensors");
    vd_safetensors_write_f32(path, e, n_entries, meta, 1);
    free(names);
    free(e);
}

/* ----------------------------------------------------------------------------------------- */
/* random init, fingerprint */

void vd_gpt2_init_random(const vd_gpt2_config *cfg, float *params, uint64_t seed) {
    size_t sizes[VD_GPT2_NUM_PARAMS];
    vd_gpt2_param_sizes(cfg, sizes);
    vd_mt19937 g;
    vd_mt19937_seed(&g, seed); /* torch semantics: the low 32 bits of the seed */
    /* GPT-2's scheme: residual projections are scaled down by sqrt(2L) so the residual stream's
     * variance does not grow with depth. */
    const float std = 0.02f;
    const float std_resid = (float)(0.02 / sqrt(2.0 * (double)cfg->n_layer));
    float *p = params;
    for (int which = 0; which < VD_GPT2_NUM_PARAMS; which++) {
        int is_bias = strstr(k_suffix[which], ".bias") != NULL;
        int is_ln = strncmp(k_suffix[which], "ln_", 3) == 0;
        int is_resid = which == 6 || which == 12; /* attn.c_proj.weight, mlp.c_proj.weight */
        for (size_t i = 0; i < sizes[which]; i++) {
            if (is_bias) p[i] = 0.0f;
            else if (is_ln) p[i] = 1.0f;
            else p[i] = (is_resid ? std_resid : std) * vd_mt19937_normal(&g);
        }
        p += sizes[which];
    }
}

uint64_t vd_gpt2_fingerprint(const vd_gpt2_config *cfg, const float *params) {
    /* fixed-width fields, not the struct: no padding bytes in the hash */
    uint64_t head[6 + VD_GPT2_NUM_PARAMS];
    uint32_t eps_bits;
    memcpy(&eps_bits, &cfg->ln_eps, sizeof(eps_bits));
    head[0] = (uint64_t)cfg->max_seq_len;
    head[1] = (uint64_t)cfg->vocab_size;
    head[2] = (uint64_t)cfg->n_layer;
    head[3] = (uint64_t)cfg->n_head;
    head[4] = (uint64_t)cfg->channels;
    head[5] = eps_bits;
    size_t sizes[VD_GPT2_NUM_PARAMS], total = 0;
    vd_gpt2_param_sizes(cfg, sizes);
    for (int i = 0; i < VD_GPT2_NUM_PARAMS; i++) {
        head[6 + i] = (uint64_t)sizes[i];
        total += sizes[i];
    }
    uint64_t h = vd_hash64(head, sizeof(head), 0x6770743266707231ULL /* "gpt2fpr1" */);
    return vd_hash64(params, total * sizeof(float), h);
}
