/* peft_io.c: reading and writing PEFT adapter directories for every method of the adapter seam:
 * the tensors go by the adapter's table (include/vera/adapter.h), the common adapter_config.json
 * keys are written and checked here, the method's own keys by its ops. */
#include "vera/peft.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "vera/common.h"
#include "vera/model.h"
#include "vera/safetensors.h"

/* A saved tensor (vera_A) the file holds must equal ours bit for bit: it is regenerated from the
 * options, so a difference means other options (or a tampered file). */
static void peft_check_saved(const vd_adapter *a, const vd_safetensors *st, const vd_adapter_saved *sv) {
    const vd_st_tensor *t = vd_safetensors_find(st, sv->peft_key);
    if (!t) return;
    int same_shape = t->ndim == sv->ndim;
    for (int32_t d = 0; same_shape && d < sv->ndim; d++) same_shape = t->shape[d] == sv->shape[d];
    if (!same_shape)
        vd_die("%s: %s has shape [%lld, %lld], expected [%lld, %lld] (other r, target_modules or model?)", st->path,
               sv->peft_key, (long long)(t->ndim > 0 ? t->shape[0] : -1), (long long)(t->ndim > 1 ? t->shape[1] : -1),
               (long long)sv->shape[0], (long long)(sv->ndim > 1 ? sv->shape[1] : -1));
    float *file = mallocCheck(sizeof(float) * sv->numel), *ours = mallocCheck(sizeof(float) * sv->numel);
    vd_safetensors_read_f32(st, t, file);
    a->be->to_host(ours, sv->data, sizeof(float) * sv->numel);
    if (memcmp(file, ours, sizeof(float) * sv->numel) != 0)
        vd_die("%s: %s differs from the projection regenerated from the run's options (projection_prng_key %llu)",
               st->path, sv->peft_key, (unsigned long long)a->opt.key);
    free(file);
    free(ours);
}

/* Every tensor of a's table by its PEFT key into hp; the file may hold nothing else. */
static void peft_read_table(const vd_adapter *a, const vd_safetensors *st, const char *path, float *hp) {
    for (int32_t i = 0; i < a->n_tensors; i++) {
        const vd_adapter_tensor *at = &a->tensors[i];
        const vd_st_tensor *t = vd_safetensors_find(st, at->peft_key);
        if (!t) vd_die("%s: missing tensor %s (HINT: target_modules and r must match the adapter's)", path, at->peft_key);
        if ((size_t)vd_st_tensor_numel(t) != at->numel || t->ndim != at->ndim)
            vd_die("%s: tensor %s has %lld elements in %d dimensions, expected %lld in %d", path, at->peft_key,
                   (long long)vd_st_tensor_numel(t), (int)t->ndim, (long long)at->numel, (int)at->ndim);
        for (int32_t d = 0; d < at->ndim; d++)
            if (t->shape[d] != at->shape[d])
                vd_die("%s: tensor %s has dimension %d of %lld, expected %lld", path, at->peft_key, (int)d,
                       (long long)t->shape[d], (long long)at->shape[d]);
        vd_safetensors_read_f32(st, t, hp + at->offset);
    }
    /* a tensor this adapter does not have means the configurations differ */
    for (int32_t k = 0; k < st->n_tensors; k++) {
        const char *name = st->tensors[k].name;
        int known = vd_adapter_find_tensor(a, name) >= 0;
        for (int32_t i = 0; i < a->n_saved && !known; i++) known = !strcmp(a->saved[i].peft_key, name);
        if (!known)
            vd_die("%s: tensor %s belongs to a layer this run does not adapt, or to another method (HINT: check "
                   "target_modules and adapter_type)", path, name);
    }
}

void vd_peft_load_tensors(vd_adapter *a, const char *path) {
    vd_safetensors st;
    vd_safetensors_open(&st, path);
    float *hp = mallocCheck(sizeof(float) * a->n_trainable);
    /* a method may read its own form first (VB-LoRA's top-k only files) */
    if (!(a->ops->peft_read_tensors && a->ops->peft_read_tensors(a, &st, hp))) peft_read_table(a, &st, path, hp);
    for (int32_t i = 0; i < a->n_saved; i++) peft_check_saved(a, &st, &a->saved[i]);
    a->be->to_device(a->params, hp, sizeof(float) * a->n_trainable);
    free(hp);
    vd_safetensors_close(&st);
    vd_adapter_refresh(a);
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
static uint32_t peft_targets_mask(const vd_model_family *f, int32_t n_sites, const cJSON *targets, const char *path) {
    int32_t n_layer = n_sites / f->n_kinds;
    uint32_t mask = 0;
    char err[512];
    if (cJSON_IsString(targets)) {
        if (!strcmp(targets->valuestring, "all-linear")) return (1u << f->n_kinds) - 1;
        vd_die("%s: target_modules is a regular expression ('%s'); only lists are supported", path, targets->valuestring);
    }
    if (!cJSON_IsArray(targets)) vd_die("%s: target_modules is missing or not a list", path);
    int32_t per_kind[VD_MAX_KINDS] = {0};
    uint8_t *seen = callocCheck((size_t)(n_sites ? n_sites : 1), 1);
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

static void peft_write_config(const char *dir, cJSON *root) {
    char *json = cJSON_Print(root);
    if (!json) vd_die("out of memory writing adapter_config.json");
    char path[VD_PATH_MAX + 64];
    snprintf(path, sizeof(path), "%s/adapter_config.json", dir);
    vd_write_file_atomic(path, json, strlen(json));
    free(json);
    cJSON_Delete(root);
}

/* DIR/adapter_config.json parsed (and its text in *text, for exact integers), refused unless its
 * peft_type is one of vera-dist's methods; *type gets the method. The caller frees both. */
static cJSON *peft_open_config(const char *path, char **text, vd_adapter_type *type) {
    *text = peft_read_text(path);
    cJSON *root = cJSON_Parse(*text);
    if (!root) vd_die("%s: not valid JSON", path);
    const cJSON *pt = cJSON_GetObjectItemCaseSensitive(root, "peft_type");
    int t = cJSON_IsString(pt) ? vd_adapter_type_of_peft(pt->valuestring) : -1;
    if (t < 0)
        vd_die("%s: peft_type is %s%s%s, expected one of this build's methods (%s)", path, cJSON_IsString(pt) ? "\"" : "",
               cJSON_IsString(pt) ? pt->valuestring : "missing", cJSON_IsString(pt) ? "\"" : "", vd_adapter_peft_types());
    *type = (vd_adapter_type)t;
    return root;
}

int vd_peft_read_u64(const char *text, const char *key, unsigned long long *out) {
    char quoted[96];
    snprintf(quoted, sizeof(quoted), "\"%s\"", key);
    const char *kp = strstr(text, quoted);
    if (!kp) return 0;
    kp += strlen(quoted);
    while (*kp == ' ' || *kp == '\t' || *kp == '\n' || *kp == '\r' || *kp == ':') kp++;
    if (!(*kp >= '0' && *kp <= '9')) return 0;
    char *end = NULL;
    errno = 0;
    *out = strtoull(kp, &end, 10);
    return errno == 0 && end != kp && (*end == ',' || *end == '}' || *end == ' ' || *end == '\n' || *end == '\r');
}

int32_t vd_peft_read_rank(const cJSON *root, const char *path, int32_t run_r) {
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(root, "r");
    if (run_r > 0 && (!cJSON_IsNumber(r) || (int32_t)r->valuedouble != run_r))
        vd_die("%s: r is %g, this run has r = %d", path, cJSON_IsNumber(r) ? r->valuedouble : -1.0, (int)run_r);
    if (!cJSON_IsNumber(r) || r->valuedouble < 1 || r->valuedouble > 65536 || r->valuedouble != (int32_t)r->valuedouble)
        vd_die("%s: r is missing or not a positive integer", path);
    return (int32_t)r->valuedouble;
}

double vd_peft_read_number(const cJSON *root, const char *path, const char *field, double def) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, field);
    if (!v || cJSON_IsNull(v)) return def;
    if (!cJSON_IsNumber(v)) vd_die("%s: %s is not a number", path, field);
    return v->valuedouble;
}

int vd_peft_read_bool(const cJSON *root, const char *path, const char *field, int def) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, field);
    if (!v || cJSON_IsNull(v)) return def;
    if (!cJSON_IsBool(v)) vd_die("%s: %s is not true or false", path, field);
    return cJSON_IsTrue(v);
}

void vd_peft_load_dir(vd_adapter *a, const char *dir) {
    char path[VD_PATH_MAX + 64];
    snprintf(path, sizeof(path), "%s/adapter_config.json", dir);
    char *text;
    vd_adapter_type type;
    cJSON *root = peft_open_config(path, &text, &type);
    if (type != a->type)
        vd_die("%s: peft_type is %s (adapter_type %s), this run has adapter_type %s", path, vd_adapter_ops_of(type)->peft_type,
               vd_adapter_type_name(type), vd_adapter_type_name(a->type));
    vd_adapter_options file = a->opt;
    a->ops->peft_config_read(root, text, path, &file, &a->opt);
    /* PEFT extras that would silently not be applied */
    const cJSON *bias = cJSON_GetObjectItemCaseSensitive(root, "bias");
    if (bias && !(cJSON_IsString(bias) && !strcmp(bias->valuestring, "none")))
        vd_die("%s: bias is not \"none\" (vera-dist trains only the adapter's tensors)", path);
    const cJSON *mts = cJSON_GetObjectItemCaseSensitive(root, "modules_to_save");
    if (mts && !cJSON_IsNull(mts) && !(cJSON_IsArray(mts) && cJSON_GetArraySize(mts) == 0))
        vd_die("%s: modules_to_save is set (vera-dist trains only the adapter's tensors)", path);
    uint32_t mask = peft_targets_mask(a->family, a->n_sites, cJSON_GetObjectItemCaseSensitive(root, "target_modules"), path);
    if (mask != a->opt.target_mask)
        vd_die("%s: target_modules select other layers than this run's target_modules", path);
    const cJSON *ltt = cJSON_GetObjectItemCaseSensitive(root, "layers_to_transform");
    if (ltt && !cJSON_IsNull(ltt)) vd_die("%s: layers_to_transform is not supported", path);
    cJSON_Delete(root);
    free(text);
    snprintf(path, sizeof(path), "%s/adapter_model.safetensors", dir);
    vd_peft_load_tensors(a, path);
}

void vd_peft_read_options(const char *dir, const vd_model *m, vd_adapter_options *opt) {
    char path[VD_PATH_MAX + 64];
    snprintf(path, sizeof(path), "%s/adapter_config.json", dir);
    if (!vd_path_exists(path)) vd_die("--adapter: %s is missing (expected a PEFT adapter directory)", path);
    char *text;
    vd_adapter_type type;
    cJSON *root = peft_open_config(path, &text, &type);
    uint32_t mask = peft_targets_mask(m->family, m->n_sites, cJSON_GetObjectItemCaseSensitive(root, "target_modules"), path);
    if (!mask) vd_die("%s: target_modules select no layer of this %s model", path, m->family->name);
    memset(opt, 0, sizeof(*opt));
    opt->type = type;
    opt->target_mask = mask;
    vd_adapter_ops_of(type)->peft_config_read(root, text, path, opt, NULL);
    cJSON_Delete(root);
    free(text);
}

/* Host copies of the saved tensors (NULL when not saving). */
static float **peft_saved_host(const vd_adapter *a, int save_saved) {
    if (!save_saved || !a->n_saved) return NULL;
    float **h = callocCheck((size_t)a->n_saved, sizeof(float *));
    for (int32_t i = 0; i < a->n_saved; i++) {
        h[i] = mallocCheck(sizeof(float) * a->saved[i].numel);
        a->be->to_host(h[i], a->saved[i].data, sizeof(float) * a->saved[i].numel);
    }
    return h;
}

static void peft_saved_free(const vd_adapter *a, float **h) {
    if (!h) return;
    for (int32_t i = 0; i < a->n_saved; i++) free(h[i]);
    free(h);
}

void vd_peft_write_safetensors(const char *path, const vd_adapter *a, const float *hp, int save_saved,
                               const char *const *meta_kv, int32_t n_meta) {
    if (a->ops->peft_write_tensors && a->ops->peft_write_tensors(a, hp, path, save_saved, meta_kv, n_meta)) return;
    float **saved = peft_saved_host(a, save_saved);
    int32_t n = a->n_tensors + (saved ? a->n_saved : 0);
    vd_st_entry *e = callocCheck((size_t)n, sizeof(vd_st_entry));
    for (int32_t i = 0; i < a->n_tensors; i++) {
        const vd_adapter_tensor *t = &a->tensors[i];
        e[i] = (vd_st_entry){t->peft_key, hp + t->offset, t->ndim, {0}};
        for (int32_t d = 0; d < t->ndim; d++) e[i].shape[d] = t->shape[d];
    }
    for (int32_t i = 0; saved && i < a->n_saved; i++) {
        const vd_adapter_saved *sv = &a->saved[i];
        vd_st_entry *x = &e[a->n_tensors + i];
        *x = (vd_st_entry){sv->peft_key, saved[i], sv->ndim, {0}};
        for (int32_t d = 0; d < sv->ndim; d++) x->shape[d] = sv->shape[d];
    }
    vd_safetensors_write_f32(path, e, n, meta_kv, n_meta);
    free(e);
    peft_saved_free(a, saved);
}

/* The keys every PEFT adapter_config.json carries; the method adds its own. */
static cJSON *peft_config_common(const vd_adapter *a, const char *peft_type, const char *base_model_path) {
    cJSON *root = cJSON_CreateObject();
    cJSON *am = cJSON_AddObjectToObject(root, "auto_mapping");
    cJSON_AddStringToObject(am, "base_model_class", a->base_model_class);
    cJSON_AddStringToObject(am, "parent_library", a->family->peft_parent_library);
    if (base_model_path && base_model_path[0]) cJSON_AddStringToObject(root, "base_model_name_or_path", base_model_path);
    else cJSON_AddNullToObject(root, "base_model_name_or_path");
    cJSON_AddStringToObject(root, "bias", "none");
    cJSON_AddBoolToObject(root, "fan_in_fan_out", a->family->fan_in_fan_out); /* Conv1D (GPT-2): in x out */
    cJSON_AddBoolToObject(root, "inference_mode", 1);
    cJSON_AddNullToObject(root, "layers_pattern");
    cJSON_AddNullToObject(root, "layers_to_transform");
    cJSON_AddNullToObject(root, "modules_to_save");
    cJSON_AddStringToObject(root, "peft_type", peft_type);
    cJSON_AddNumberToObject(root, "r", a->opt.r);
    cJSON_AddNullToObject(root, "revision");
    cJSON *targets = cJSON_AddArrayToObject(root, "target_modules");
    for (int32_t k = 0; k < a->family->n_kinds; k++)
        if (a->opt.target_mask & (1u << k)) cJSON_AddItemToArray(targets, cJSON_CreateString(a->family->kind_paths[k]));
    cJSON_AddNullToObject(root, "task_type");
    return root;
}

void vd_peft_save_dir(const char *dir, const vd_adapter *a, const float *hp, int save_saved,
                      const char *base_model_path) {
    vd_mkdir_p(dir);
    char path[VD_PATH_MAX + 64];
    snprintf(path, sizeof(path), "%s/adapter_model.safetensors", dir);
    const char *meta[] = {"format", "pt"};
    vd_peft_write_safetensors(path, a, hp, save_saved, meta, 1);
    cJSON *root = peft_config_common(a, a->ops->peft_type, base_model_path);
    a->ops->peft_config_write(a, root, save_saved);
    peft_write_config(dir, root);
}

/* dW = diag(b) B[:out] diag(d) A[:, :in] is a rank-r LoRA with lora_B = diag(b) B[:out] and
 * lora_A = diag(d) A[:, :in], scaling lora_alpha / r = 1. VeRA's table holds [lambda_b,
 * lambda_d] per module; its saved tensors are A then B. */
void vd_peft_save_lora_dir(const char *dir, const vd_adapter *a, const float *hp, const char *base_model_path) {
    vd_require(a->type == VD_ADAPTER_VERA && a->n_saved == 2 && a->n_tensors == 2 * a->n_modules);
    vd_mkdir_p(dir);
    float **proj = peft_saved_host(a, 1);
    const float *A = proj[0], *B = proj[1];
    int32_t r = a->opt.r, n = 2 * a->n_modules;
    vd_st_entry *e = callocCheck((size_t)n, sizeof(vd_st_entry));
    char (*names)[192] = callocCheck((size_t)n, 192);
    float **bufs = callocCheck((size_t)n, sizeof(float *));
    for (int32_t i = 0; i < a->n_modules; i++) {
        const vd_adapter_module *md = &a->modules[i];
        const float *b = hp + a->tensors[2 * i].offset, *d = hp + a->tensors[2 * i + 1].offset;
        float *la = mallocCheck(sizeof(float) * (size_t)r * md->in);  /* (r, in) */
        float *lb = mallocCheck(sizeof(float) * (size_t)md->out * r); /* (out, r) */
        for (int32_t k = 0; k < r; k++)
            for (int32_t j = 0; j < md->in; j++) la[(size_t)k * md->in + j] = d[k] * A[(size_t)k * a->max_in + j];
        for (int32_t o = 0; o < md->out; o++)
            for (int32_t k = 0; k < r; k++) lb[(size_t)o * r + k] = b[o] * B[(size_t)o * r + k];
        snprintf(names[2 * i], 192, "base_model.model.%s.lora_A.weight", md->name);
        snprintf(names[2 * i + 1], 192, "base_model.model.%s.lora_B.weight", md->name);
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
    peft_saved_free(a, proj);

    /* LoRA's own config writer, on a LoRA view of this adapter with scaling lora_alpha / r = 1 */
    vd_adapter lora = *a;
    lora.opt.lora_alpha = (float)r;
    lora.opt.lora_dropout = 0.0f;
    lora.opt.use_rslora = 0;
    cJSON *root = peft_config_common(&lora, vd_lora_ops.peft_type, base_model_path);
    vd_lora_ops.peft_config_write(&lora, root, 0);
    peft_write_config(dir, root);
}
