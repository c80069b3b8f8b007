/* peft_io.c: reading and writing PEFT's VeRA adapter directories. */
#include "vera/peft.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "vera/common.h"
#include "vera/model.h"
#include "vera/safetensors.h"

static int peft_bits_equal(const float *a, const float *b, size_t n) { return memcmp(a, b, sizeof(float) * n) == 0; }

/* Compares a projection stored in the file with ours, bit for bit. */
static void peft_check_projection(const vd_vera *v, const vd_safetensors *st, const char *key, const float *dev,
                                  int64_t rows, int64_t cols) {
    const vd_st_tensor *t = vd_safetensors_find(st, key);
    if (!t) return;
    if (t->ndim != 2 || t->shape[0] != rows || t->shape[1] != cols)
        vd_die("%s: %s has shape [%lld, %lld], expected [%lld, %lld] (other r, target_modules or model?)", st->path,
               key, (long long)(t->ndim > 0 ? t->shape[0] : -1), (long long)(t->ndim > 1 ? t->shape[1] : -1),
               (long long)rows, (long long)cols);
    size_t n = (size_t)(rows * cols);
    float *file = mallocCheck(sizeof(float) * n), *ours = mallocCheck(sizeof(float) * n);
    vd_safetensors_read_f32(st, t, file);
    v->be->to_host(ours, dev, sizeof(float) * n);
    if (!peft_bits_equal(file, ours, n))
        vd_die("%s: %s differs from the projection regenerated from projection_prng_key %llu", st->path, key,
               (unsigned long long)v->opt.key);
    free(file);
    free(ours);
}

void vd_peft_load_vectors(vd_vera *v, const char *path) {
    vd_safetensors st;
    vd_safetensors_open(&st, path);
    float *hp = mallocCheck(sizeof(float) * v->n_trainable);
    char key[256];
    for (int32_t i = 0; i < v->n_modules; i++) {
        const vd_vera_module *md = &v->modules[i];
        const char *what[2] = {"vera_lambda_b", "vera_lambda_d"};
        int64_t len[2] = {md->out, v->opt.r};
        size_t off[2] = {md->off_b, md->off_d};
        for (int j = 0; j < 2; j++) {
            snprintf(key, sizeof(key), "base_model.model.%s.%s", md->name, what[j]);
            const vd_st_tensor *t = vd_safetensors_find(&st, key);
            if (!t) vd_die("%s: missing tensor %s (HINT: target_modules must match the adapter's)", path, key);
            if (vd_st_tensor_numel(t) != len[j] || t->ndim != 1)
                vd_die("%s: tensor %s has %lld elements, expected %lld", path, key, (long long)vd_st_tensor_numel(t),
                       (long long)len[j]);
            vd_safetensors_read_f32(&st, t, hp + off[j]);
        }
    }
    /* a vector for a module this run does not adapt means the configurations differ */
    for (int32_t k = 0; k < st.n_tensors; k++) {
        const char *name = st.tensors[k].name;
        if (!strstr(name, ".vera_lambda_")) continue;
        int known = 0;
        for (int32_t i = 0; i < v->n_modules && !known; i++) {
            snprintf(key, sizeof(key), "base_model.model.%s.vera_lambda_", v->modules[i].name);
            known = strncmp(name, key, strlen(key)) == 0;
        }
        if (!known) vd_die("%s: tensor %s belongs to a layer this run does not adapt (HINT: check target_modules)", path, name);
    }
    peft_check_projection(v, &st, "base_model.vera_A", v->A, v->opt.r, v->max_in);
    peft_check_projection(v, &st, "base_model.vera_B", v->B, v->max_out, v->opt.r);
    v->be->to_device(v->params, hp, sizeof(float) * v->n_trainable);
    free(hp);
    vd_safetensors_close(&st);
    vd_vera_refresh(v);
}

static char *peft_read_text(const char *path) {
    FILE *f = fopenCheck(path, "rb");
    if (fseek(f, 0, SEEK_END) != 0) vd_die("%s: cannot seek", path);
    long n = ftell(f);
    if (n < 0 || n > (1 << 24)) vd_die("%s: unexpected size", path);
    rewind(f);
    char *buf = mallocCheck((size_t)n + 1);
    freadCheck(buf, 1, (size_t)n, f, path);
    buf[n] = 0;
    fcloseCheck(f, path);
    return buf;
}

/* Block index and kind of a full module path ("model.layers.3.self_attn.q_proj"), or -1. */
static int32_t peft_full_path_kind(const vd_model_family *f, const char *name, int32_t n_layer, int32_t *layer) {
    for (int32_t l = 0; l < n_layer; l++)
        for (int32_t k = 0; k < f->n_kinds; k++) {
            char path[128];
            vd_model_site_name(f, l, k, path, sizeof(path));
            if (!strcmp(path, name)) {
                *layer = l;
                return k;
            }
        }
    return -1;
}

/* PEFT matches a target name against the end of a module path ("c_attn" matches
 * "transformer.h.0.attn.c_attn"); the family's table maps each name to its kinds. PEFT saves
 * "all-linear" as the list of every full module path: such entries count per layer, and must
 * cover every layer of a kind (vera-dist adapts whole kinds). */
static uint32_t peft_targets_mask(const vd_vera *v, const cJSON *targets, const char *path) {
    const vd_model_family *f = v->family;
    int32_t n_layer = v->n_sites / f->n_kinds;
    uint32_t mask = 0;
    char err[512];
    if (cJSON_IsString(targets)) {
        if (!strcmp(targets->valuestring, "all-linear")) return (1u << f->n_kinds) - 1;
        vd_die("%s: target_modules is a regular expression ('%s'); only lists are supported", path, targets->valuestring);
    }
    if (!cJSON_IsArray(targets)) vd_die("%s: target_modules is missing or not a list", path);
    int32_t per_kind[VD_MAX_KINDS] = {0};
    uint8_t *seen = callocCheck((size_t)(v->n_sites ? v->n_sites : 1), 1);
    const cJSON *t;
    cJSON_ArrayForEach(t, targets) {
        if (!cJSON_IsString(t)) vd_die("%s: target_modules holds a non-string", path);
        int32_t layer = 0, kind = peft_full_path_kind(f, t->valuestring, n_layer, &layer);
        if (kind >= 0) {
            if (!seen[layer * f->n_kinds + kind]) per_kind[kind]++;
            seen[layer * f->n_kinds + kind] = 1;
            continue;
        }
        uint32_t bits = vd_model_parse_targets(f, t->valuestring, err, sizeof(err));
        if (!bits) vd_die("%s: target_modules entry %s", path, err);
        mask |= bits;
    }
    free(seen);
    for (int32_t k = 0; k < f->n_kinds; k++) {
        if (!per_kind[k] || (mask & (1u << k))) continue;
        if (per_kind[k] != n_layer)
            vd_die("%s: target_modules names %s in %d of %d layers; vera-dist adapts a layer type in every layer "
                   "(per-layer target lists are not supported)", path, f->kind_paths[k], (int)per_kind[k], (int)n_layer);
        mask |= 1u << k;
    }
    return mask;
}

/* DIR/adapter_config.json parsed (and its text in *text, for peft_read_key), refused unless it is
 * a VeRA adapter's. The caller frees both. */
static cJSON *peft_open_config(const char *path, char **text) {
    *text = peft_read_text(path);
    cJSON *root = cJSON_Parse(*text);
    if (!root) vd_die("%s: not valid JSON", path);
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(root, "peft_type");
    if (!cJSON_IsString(type) || strcmp(type->valuestring, "VERA") != 0)
        vd_die("%s: peft_type is not \"VERA\"", path);
    return root;
}

/* projection_prng_key's digits from the JSON text itself (cJSON's double cannot tell 2^60 from
 * 2^60 + 1): 1 and *key when they form a whole non-negative integer, else 0. */
static int peft_read_key(const char *text, unsigned long long *key) {
    const char *kp = strstr(text, "\"projection_prng_key\"");
    if (!kp) return 0;
    kp += strlen("\"projection_prng_key\"");
    while (*kp == ' ' || *kp == '\t' || *kp == '\n' || *kp == '\r' || *kp == ':') kp++;
    if (!(*kp >= '0' && *kp <= '9')) return 0;
    char *end = NULL;
    errno = 0;
    *key = strtoull(kp, &end, 10);
    return errno == 0 && end != kp && (*end == ',' || *end == '}' || *end == ' ' || *end == '\n' || *end == '\r');
}

void vd_peft_load_dir(vd_vera *v, const char *dir) {
    char path[VD_PATH_MAX + 64];
    snprintf(path, sizeof(path), "%s/adapter_config.json", dir);
    char *text;
    cJSON *root = peft_open_config(path, &text);
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(root, "r");
    if (!cJSON_IsNumber(r) || (int32_t)r->valuedouble != v->opt.r)
        vd_die("%s: r is %g, this run has r = %d", path, cJSON_IsNumber(r) ? r->valuedouble : -1.0, (int)v->opt.r);
    /* JSON numbers are doubles in cJSON, which cannot tell 2^60 from 2^60 + 1: read the key's
     * digits from the text itself and compare as uint64 */
    const cJSON *key = cJSON_GetObjectItemCaseSensitive(root, "projection_prng_key");
    if (!cJSON_IsNumber(key)) vd_die("%s: projection_prng_key is missing or not a number", path);
    unsigned long long file_key = 0;
    if (!peft_read_key(text, &file_key)) vd_die("%s: projection_prng_key is not a non-negative integer", path);
    if ((uint64_t)file_key != v->opt.key)
        vd_die("%s: projection_prng_key is %llu, this run has %llu", path, file_key, (unsigned long long)v->opt.key);
    /* PEFT extras that would silently not be applied */
    const cJSON *bias = cJSON_GetObjectItemCaseSensitive(root, "bias");
    if (bias && !(cJSON_IsString(bias) && !strcmp(bias->valuestring, "none")))
        vd_die("%s: bias is not \"none\" (vera-dist trains only the VeRA vectors)", path);
    const cJSON *mts = cJSON_GetObjectItemCaseSensitive(root, "modules_to_save");
    if (mts && !cJSON_IsNull(mts) && !(cJSON_IsArray(mts) && cJSON_GetArraySize(mts) == 0))
        vd_die("%s: modules_to_save is set (vera-dist trains only the VeRA vectors)", path);
    uint32_t mask = peft_targets_mask(v, cJSON_GetObjectItemCaseSensitive(root, "target_modules"), path);
    if (mask != v->opt.target_mask)
        vd_die("%s: target_modules select other layers than this run's target_modules", path);
    const cJSON *ltt = cJSON_GetObjectItemCaseSensitive(root, "layers_to_transform");
    if (ltt && !cJSON_IsNull(ltt)) vd_die("%s: layers_to_transform is not supported", path);
    cJSON_Delete(root);
    free(text);
    snprintf(path, sizeof(path), "%s/adapter_model.safetensors", dir);
    vd_peft_load_vectors(v, path);
}

void vd_peft_read_options(const char *dir, const vd_model *m, vd_vera_options *opt) {
    char path[VD_PATH_MAX + 64];
    snprintf(path, sizeof(path), "%s/adapter_config.json", dir);
    if (!vd_path_exists(path)) vd_die("--adapter: %s is missing (expected a PEFT VeRA adapter directory)", path);
    char *text;
    cJSON *root = peft_open_config(path, &text);
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(root, "r");
    if (!cJSON_IsNumber(r) || r->valuedouble < 1 || r->valuedouble > 65536 || r->valuedouble != (int32_t)r->valuedouble)
        vd_die("%s: r is missing or not a positive integer", path);
    /* the key's digits from the text: cJSON's double cannot hold every uint64 */
    unsigned long long key = 0;
    if (!peft_read_key(text, &key)) vd_die("%s: projection_prng_key is missing or not a non-negative integer", path);
    vd_vera scratch; /* peft_targets_mask reads the family and the site count */
    memset(&scratch, 0, sizeof(scratch));
    scratch.family = m->family;
    scratch.n_sites = m->n_sites;
    uint32_t mask = peft_targets_mask(&scratch, cJSON_GetObjectItemCaseSensitive(root, "target_modules"), path);
    if (!mask) vd_die("%s: target_modules select no layer of this %s model", path, m->family->name);
    memset(opt, 0, sizeof(*opt));
    opt->r = (int32_t)r->valuedouble;
    opt->key = (uint64_t)key;
    opt->target_mask = mask;
    cJSON_Delete(root);
    free(text);
}

void vd_peft_write_safetensors(const char *path, const vd_vera *v, const float *params, const float *A,
                               const float *B, const char *const *meta_kv, int32_t n_meta) {
    int32_t n = v->n_modules * 2 + (A && B ? 2 : 0);
    vd_st_entry *e = callocCheck((size_t)n, sizeof(vd_st_entry));
    char (*names)[160] = callocCheck((size_t)n, 160);
    for (int32_t i = 0; i < v->n_modules; i++) {
        const vd_vera_module *md = &v->modules[i];
        snprintf(names[2 * i], 160, "base_model.model.%s.vera_lambda_b", md->name);
        snprintf(names[2 * i + 1], 160, "base_model.model.%s.vera_lambda_d", md->name);
        e[2 * i] = (vd_st_entry){names[2 * i], params + md->off_b, 1, {md->out}};
        e[2 * i + 1] = (vd_st_entry){names[2 * i + 1], params + md->off_d, 1, {v->opt.r}};
    }
    if (A && B) {
        e[n - 2] = (vd_st_entry){"base_model.vera_A", A, 2, {v->opt.r, v->max_in}};
        e[n - 1] = (vd_st_entry){"base_model.vera_B", B, 2, {v->max_out, v->opt.r}};
    }
    vd_safetensors_write_f32(path, e, n, meta_kv, n_meta);
    free(names);
    free(e);
}

/* The keys every PEFT adapter_config.json carries, shared by the VeRA and LoRA writers. */
static cJSON *peft_config_common(const vd_vera *v, const char *peft_type, const char *base_model_path) {
    cJSON *root = cJSON_CreateObject();
    cJSON *am = cJSON_AddObjectToObject(root, "auto_mapping");
    cJSON_AddStringToObject(am, "base_model_class", v->base_model_class);
    cJSON_AddStringToObject(am, "parent_library", v->family->peft_parent_library);
    if (base_model_path && base_model_path[0]) cJSON_AddStringToObject(root, "base_model_name_or_path", base_model_path);
    else cJSON_AddNullToObject(root, "base_model_name_or_path");
    cJSON_AddStringToObject(root, "bias", "none");
    cJSON_AddBoolToObject(root, "fan_in_fan_out", v->family->fan_in_fan_out); /* Conv1D (GPT-2): in x out */
    cJSON_AddBoolToObject(root, "inference_mode", 1);
    cJSON_AddNullToObject(root, "layers_pattern");
    cJSON_AddNullToObject(root, "layers_to_transform");
    cJSON_AddNullToObject(root, "modules_to_save");
    cJSON_AddStringToObject(root, "peft_type", peft_type);
    cJSON_AddNumberToObject(root, "r", v->opt.r);
    cJSON_AddNullToObject(root, "revision");
    cJSON *targets = cJSON_AddArrayToObject(root, "target_modules");
    for (int32_t k = 0; k < v->family->n_kinds; k++)
        if (v->opt.target_mask & (1u << k)) cJSON_AddItemToArray(targets, cJSON_CreateString(v->family->kind_paths[k]));
    cJSON_AddNullToObject(root, "task_type");
    return root;
}

static void peft_write_config(const char *dir, cJSON *root) {
    char *json = cJSON_Print(root);
    if (!json) vd_die("out of memory writing adapter_config.json");
    char path[VD_PATH_MAX + 64];
    snprintf(path, sizeof(path), "%s/adapter_config.json", dir);
    vd_write_file_atomic(path, json, strlen(json));
    free(json);
    cJSON_Delete(root);
}

void vd_peft_save_dir(const char *dir, const vd_vera *v, const float *params, const float *A, const float *B,
                      int save_projection, const char *base_model_path) {
    vd_mkdir_p(dir);
    char path[VD_PATH_MAX + 64];
    snprintf(path, sizeof(path), "%s/adapter_model.safetensors", dir);
    const char *meta[] = {"format", "pt"};
    vd_peft_write_safetensors(path, v, params, save_projection ? A : NULL, save_projection ? B : NULL, meta, 1);

    cJSON *root = peft_config_common(v, "VERA", base_model_path);
    /* the shortest decimal that reads back as the same float: 0.1, not 0.10000000149011612 */
    char dtext[32];
    vd_format_float_shortest(dtext, sizeof(dtext), v->opt.d_initial);
    cJSON_AddItemToObject(root, "d_initial", cJSON_CreateRaw(dtext));
    cJSON_AddBoolToObject(root, "init_weights", 1);
    /* cJSON prints doubles; a 64-bit key above 2^53 needs its exact digits */
    char keytext[32];
    snprintf(keytext, sizeof(keytext), "%llu", (unsigned long long)v->opt.key);
    cJSON_AddItemToObject(root, "projection_prng_key", cJSON_CreateRaw(keytext));
    cJSON_AddBoolToObject(root, "save_projection", save_projection != 0);
    cJSON_AddNumberToObject(root, "vera_dropout", (double)v->opt.dropout);
    peft_write_config(dir, root);
}

/* dW = diag(b) B[:out] diag(d) A[:, :in] is a rank-r LoRA with lora_B = diag(b) B[:out] and
 * lora_A = diag(d) A[:, :in], scaling lora_alpha / r = 1. */
void vd_peft_save_lora_dir(const char *dir, const vd_vera *v, const float *params, const float *A, const float *B,
                           const char *base_model_path) {
    vd_mkdir_p(dir);
    int32_t r = v->opt.r, n = 2 * v->n_modules;
    vd_st_entry *e = callocCheck((size_t)n, sizeof(vd_st_entry));
    char (*names)[160] = callocCheck((size_t)n, 160);
    float **bufs = callocCheck((size_t)n, sizeof(float *));
    for (int32_t i = 0; i < v->n_modules; i++) {
        const vd_vera_module *md = &v->modules[i];
        const float *b = params + md->off_b, *d = params + md->off_d;
        float *la = mallocCheck(sizeof(float) * (size_t)r * md->in);  /* (r, in) */
        float *lb = mallocCheck(sizeof(float) * (size_t)md->out * r); /* (out, r) */
        for (int32_t k = 0; k < r; k++)
            for (int32_t j = 0; j < md->in; j++) la[(size_t)k * md->in + j] = d[k] * A[(size_t)k * v->max_in + j];
        for (int32_t o = 0; o < md->out; o++)
            for (int32_t k = 0; k < r; k++) lb[(size_t)o * r + k] = b[o] * B[(size_t)o * r + k];
        snprintf(names[2 * i], 160, "base_model.model.%s.lora_A.weight", md->name);
        snprintf(names[2 * i + 1], 160, "base_model.model.%s.lora_B.weight", md->name);
        e[2 * i] = (vd_st_entry){names[2 * i], la, 2, {r, md->in}};
        e[2 * i + 1] = (vd_st_entry){names[2 * i + 1], lb, 2, {md->out, r}};
        bufs[2 * i] = la;
        bufs[2 * i + 1] = lb;
    }
    char path[VD_PATH_MAX + 64];
    snprintf(path, sizeof(path), "%s/adapter_model.safetensors", dir);
    const char *meta[] = {"format", "pt"};
    vd_safetensors_write_f32(path, e, n, meta, 1);
    for (int32_t i = 0; i < n; i++) free(bufs[i]);
    free(bufs);
    free(names);
    free(e);

    cJSON *root = peft_config_common(v, "LORA", base_model_path);
    cJSON_AddNumberToObject(root, "lora_alpha", r);
    cJSON_AddNumberToObject(root, "lora_dropout", 0.0);
    cJSON_AddBoolToObject(root, "init_lora_weights", 1);
    cJSON_AddBoolToObject(root, "use_rslora", 0);
    cJSON_AddBoolToObject(root, "use_dora", 0);
    cJSON_AddObjectToObject(root, "rank_pattern");
    cJSON_AddObjectToObject(root, "alpha_pattern");
    peft_write_config(dir, root);
}
