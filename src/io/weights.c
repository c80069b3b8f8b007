/* weights.c: a base model's frozen tensors by Hugging Face name (include/vera/weights.h).
 *
 * Two sources behind one lookup table of (HF name -> where its bytes are):
 *   - a Hugging Face directory: config.json, then model.safetensors, or
 *     model.safetensors.index.json whose "weight_map" sends each tensor name to a shard file
 *     in the same directory (each distinct shard is mapped once);
 *   - a GGUF file (src/io/gguf.c), whose llama.cpp names are mapped back to HF's.
 * Everything a later read could trip on (a shard that is missing, a tensor the index names but
 * its shard lacks, a name listed twice) is checked on open, so a bad model dies before any
 * weight is allocated. Reads check the requested shape exactly: a model family asking for the
 * wrong shape is told which file and tensor disagree. */
#define _POSIX_C_SOURCE 200809L
#include "vera/weights.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "vera/common.h"
#include "vera/gguf.h"
#include "vera/safetensors.h"

typedef enum { VD_SRC_HF = 0, VD_SRC_GGUF } vd_src_kind;

/* One tensor by HF name. For HF: shard + tensor in it. For GGUF: the GGUF tensor, its HF shape
 * and, for q_proj / k_proj, the head count to undo llama.cpp's RoPE row permutation with. */
typedef struct {
    char *name;                 /* HF name (owned) */
    int32_t shard;              /* HF: index into shards */
    const vd_st_tensor *st;     /* HF: the tensor in that shard */
    int64_t gguf_index;         /* GGUF: index into gguf.tensors */
    int32_t ndim;               /* GGUF: HF shape */
    int64_t shape[4];
    int32_t unpermute_heads;    /* GGUF: 0 = as stored, else n_head (q) or n_head_kv (k) */
} vd_w_entry;

struct vd_weights {
    vd_src_kind kind;
    char path[VD_PATH_MAX];        /* the directory or the .gguf file */
    char config_path[VD_PATH_MAX]; /* DIR/config.json or the .gguf file */
    char source[VD_PATH_MAX];      /* what names a missing tensor: model.safetensors, the index, or the .gguf */
    cJSON *config;
    vd_safetensors *shards;
    int32_t n_shards;
    vd_gguf gguf;
    vd_w_entry *entries; /* sorted by name */
    int64_t n_entries;
};

/* ----------------------------------------------------------------------------------------- */
/* helpers */

static void vd_join(char *out, size_t cap, const char *dir, const char *name) {
    size_t n = strlen(dir);
    const char *sep = (n > 0 && dir[n - 1] == '/') ? "" : "/";
    if (snprintf(out, cap, "%s%s%s", dir, sep, name) >= (int)cap) vd_die("%s/%s: path too long", dir, name);
}

static int vd_is_regular(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

static char *vd_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = mallocCheck(n);
    memcpy(p, s, n);
    return p;
}

/* The whole file as a NUL-terminated string. JSON files of a model are small (an index of a
 * 70B model is ~100 kB); refuse anything absurd rather than reading gigabytes. */
static char *vd_read_text(const char *path, size_t *len_out) {
    FILE *f = fopenCheck(path, "rb");
    if (fseek(f, 0, SEEK_END) != 0) vd_die("%s: cannot seek (%s)", path, strerror(errno));
    long len = ftell(f);
    if (len < 0) vd_die("%s: cannot tell the size (%s)", path, strerror(errno));
    if (len > 256L * 1024 * 1024) vd_die("%s: %ld bytes is too large for a JSON file (expected under 256 MB)", path, len);
    if (fseek(f, 0, SEEK_SET) != 0) vd_die("%s: cannot seek (%s)", path, strerror(errno));
    char *buf = mallocCheck((size_t)len + 1);
    if (len > 0) freadCheck(buf, 1, (size_t)len, f, path);
    buf[len] = 0;
    fcloseCheck(f, path);
    *len_out = (size_t)len;
    return buf;
}

static cJSON *vd_read_json_object(const char *path, const char *what) {
    size_t len;
    char *text = vd_read_text(path, &len);
    cJSON *root = cJSON_ParseWithLength(text, len);
    if (!root) {
        const char *where = cJSON_GetErrorPtr();
        long at = (where && where >= text && where <= text + len) ? (long)(where - text) : -1;
        free(text);
        vd_die("%s: not valid JSON (parse error near byte %ld; expected %s)", path, at, what);
    }
    free(text);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        vd_die("%s: not a JSON object (expected %s)", path, what);
    }
    return root;
}

static int vd_entry_cmp(const void *a, const void *b) {
    return strcmp(((const vd_w_entry *)a)->name, ((const vd_w_entry *)b)->name);
}

/* Sorts the entries for bsearch and refuses a name listed twice (JSON allows repeated keys and
 * cJSON keeps both; GGUF names could collide after mapping): which one would a read get? */
static void vd_sort_entries(vd_weights *w) {
    if (w->n_entries > 1) qsort(w->entries, (size_t)w->n_entries, sizeof(vd_w_entry), vd_entry_cmp);
    for (int64_t i = 1; i < w->n_entries; i++)
        if (strcmp(w->entries[i - 1].name, w->entries[i].name) == 0)
            vd_die("%s: tensor %s is listed twice (expected unique names)", w->source, w->entries[i].name);
}

static const vd_w_entry *vd_find(const vd_weights *w, const char *name) {
    vd_w_entry key = {0};
    key.name = (char *)name;
    return w->n_entries ? bsearch(&key, w->entries, (size_t)w->n_entries, sizeof(vd_w_entry), vd_entry_cmp) : NULL;
}

/* "[a, b, c]" */
static void vd_shape_str(char *out, size_t cap, int32_t ndim, const int64_t *shape) {
    size_t n = 0;
    n += (size_t)snprintf(out + n, cap - n, "[");
    for (int32_t d = 0; d < ndim && n < cap; d++)
        n += (size_t)snprintf(out + n, cap - n, "%s%lld", d ? ", " : "", (long long)shape[d]);
    if (n < cap) snprintf(out + n, cap - n, "]");
}

/* ----------------------------------------------------------------------------------------- */
/* Hugging Face directory */

static void vd_open_hf(vd_weights *w, const char *dir) {
    w->kind = VD_SRC_HF;
    vd_join(w->config_path, sizeof(w->config_path), dir, "config.json");
    /* there but not a regular file (a FIFO would block): say so rather than "missing" */
    if (vd_path_exists(w->config_path)) vd_require_regular_file(w->config_path, "the model's config.json");
    if (!vd_is_regular(w->config_path))
        vd_die("%s: missing (expected a Hugging Face model directory with config.json and model.safetensors)",
               w->config_path);
    w->config = vd_read_json_object(w->config_path, "the model's configuration object");

    char single[VD_PATH_MAX], index[VD_PATH_MAX];
    vd_join(single, sizeof(single), dir, "model.safetensors");
    vd_join(index, sizeof(index), dir, "model.safetensors.index.json");

    if (vd_path_exists(single)) vd_require_regular_file(single, "a .safetensors file");
    if (vd_path_exists(index)) vd_require_regular_file(index, "a safetensors index (JSON)");
    if (vd_is_regular(single)) {
        /* one file: its header is the table */
        snprintf(w->source, sizeof(w->source), "%s", single);
        w->shards = callocCheck(1, sizeof(vd_safetensors));
        w->n_shards = 1;
        vd_safetensors_open(&w->shards[0], single);
        w->n_entries = w->shards[0].n_tensors;
        w->entries = callocCheck((size_t)w->n_entries, sizeof(vd_w_entry));
        for (int64_t i = 0; i < w->n_entries; i++) {
            w->entries[i].name = vd_strdup(w->shards[0].tensors[i].name);
            w->entries[i].shard = 0;
            w->entries[i].st = &w->shards[0].tensors[i];
        }
        vd_sort_entries(w);
        return;
    }
    if (!vd_is_regular(index))
        vd_die("%s: neither model.safetensors nor model.safetensors.index.json is there (expected the weights next "
               "to config.json)",
               dir);

    snprintf(w->source, sizeof(w->source), "%s", index);
    cJSON *root = vd_read_json_object(index, "{\"weight_map\": {tensor name: shard file}}");
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(map))
        vd_die("%s: missing or non-object \"weight_map\" (expected {tensor name: shard file})", index);
    int64_t n = 0;
    for (const cJSON *it = map->child; it; it = it->next) n++;
    w->n_entries = n;
    w->entries = callocCheck((size_t)(n ? n : 1), sizeof(vd_w_entry));
    /* distinct shard names, in first-seen order; an index has a handful, a linear scan is fine */
    const char **shard_names = callocCheck((size_t)(n ? n : 1), sizeof(char *));
    int32_t n_shards = 0;
    int64_t k = 0;
    for (const cJSON *it = map->child; it; it = it->next, k++) {
        if (!cJSON_IsString(it) || it->valuestring[0] == 0)
            vd_die("%s: weight_map[\"%s\"] is not a file name (expected a shard file such as "
                   "\"model-00001-of-00002.safetensors\")",
                   index, it->string);
        const char *file = it->valuestring;
        /* shards live next to the index: refuse paths that would read elsewhere */
        if (file[0] == '/' || strstr(file, "..") != NULL)
            vd_die("%s: weight_map[\"%s\"] = \"%s\" leaves the model directory (expected a file name next to the index)",
                   index, it->string, file);
        int32_t s = 0;
        while (s < n_shards && strcmp(shard_names[s], file) != 0) s++;
        if (s == n_shards) shard_names[n_shards++] = file;
        w->entries[k].name = vd_strdup(it->string);
        w->entries[k].shard = s;
    }
    w->shards = callocCheck((size_t)(n_shards ? n_shards : 1), sizeof(vd_safetensors));
    w->n_shards = n_shards;
    for (int32_t s = 0; s < n_shards; s++) {
        char path[VD_PATH_MAX];
        vd_join(path, sizeof(path), dir, shard_names[s]);
        if (vd_path_exists(path)) vd_require_regular_file(path, "a .safetensors shard");
        if (!vd_is_regular(path)) {
            const char *first = "?";
            for (int64_t i = 0; i < n; i++)
                if (w->entries[i].shard == s) { first = w->entries[i].name; break; }
            vd_die("%s: missing (named by %s for tensor %s; expected the shard file next to the index)", path, index,
                   first);
        }
        vd_safetensors_open(&w->shards[s], path);
    }
    for (int64_t i = 0; i < n; i++) {
        vd_w_entry *e = &w->entries[i];
        e->st = vd_safetensors_find(&w->shards[e->shard], e->name);
        if (!e->st)
            vd_die("%s: no tensor %s (expected it there: %s maps it to this shard)", w->shards[e->shard].path, e->name,
                   index);
    }
    free(shard_names);
    cJSON_Delete(root);
    vd_sort_entries(w);
}

/* ----------------------------------------------------------------------------------------- */
/* GGUF file */

static void vd_open_gguf(vd_weights *w, const char *path) {
    w->kind = VD_SRC_GGUF;
    snprintf(w->config_path, sizeof(w->config_path), "%s", path);
    snprintf(w->source, sizeof(w->source), "%s", path);
    vd_gguf_open(&w->gguf, path);
    w->config = vd_gguf_llama_config(&w->gguf);
    int32_t n_head = 0, n_head_kv = 0;
    const cJSON *h = cJSON_GetObjectItemCaseSensitive(w->config, "num_attention_heads");
    const cJSON *hk = cJSON_GetObjectItemCaseSensitive(w->config, "num_key_value_heads");
    if (cJSON_IsNumber(h)) n_head = (int32_t)h->valuedouble;
    if (cJSON_IsNumber(hk)) n_head_kv = (int32_t)hk->valuedouble;

    w->entries = callocCheck((size_t)(w->gguf.n_tensors ? w->gguf.n_tensors : 1), sizeof(vd_w_entry));
    for (int64_t i = 0; i < w->gguf.n_tensors; i++) {
        const vd_gguf_tensor *t = &w->gguf.tensors[i];
        char hf[512];
        int kind = vd_gguf_llama_hf_name(t->name, hf, sizeof(hf));
        /* rope_freqs is Llama 3.1+'s RoPE scaling as llama.cpp stores it: ignoring it would
         * rotate every position by the wrong angles, so refuse (the HF directory works) */
        if (kind == VD_GGUF_LLAMA_CPP_ONLY)
            vd_die("%s: tensor %s holds llama.cpp's RoPE frequency factors (Llama 3 rope scaling), which are not "
                   "supported from GGUF (expected a model without rope scaling; load the Hugging Face directory, "
                   "whose config.json carries rope_scaling)", path, t->name);
        if (kind == VD_GGUF_NO_HF_NAME)
            vd_die("%s: tensor %s has no Hugging Face Llama name (expected token_embd, output_norm, output or "
                   "blk.N.{attn_norm,attn_q,attn_k,attn_v,attn_output,ffn_norm,ffn_gate,ffn_up,ffn_down}, .weight or .bias)",
                   path, t->name);
        /* refuse now, not at the read: the model would fail half-loaded otherwise */
        if (!vd_gguf_type_supported(t->type))
            vd_die("%s: tensor %s has type %s (%u), which is not supported (expected F32, F16, BF16, Q8_0, Q4_0 or "
                   "Q4_1)",
                   path, t->name, vd_gguf_type_name(t->type), t->type);
        vd_w_entry *e = &w->entries[w->n_entries++];
        e->name = vd_strdup(hf);
        e->gguf_index = i;
        /* GGUF lists dims fastest first: ne = [in, out] is HF's (out, in) */
        e->ndim = t->n_dims;
        for (int32_t d = 0; d < t->n_dims; d++) e->shape[d] = t->ne[t->n_dims - 1 - d];
        if (kind == VD_GGUF_PERMUTED_Q || kind == VD_GGUF_PERMUTED_K) {
            int32_t heads = kind == VD_GGUF_PERMUTED_Q ? n_head : n_head_kv;
            /* rows come as heads x 2 halves of head_dim / 2: each head's rows must split evenly */
            if (heads <= 0 || e->shape[0] % (2 * (int64_t)heads) != 0)
                vd_die("%s: tensor %s has %lld rows, not a multiple of 2 x %d heads (expected llama's q/k layout)", path,
                       t->name, (long long)e->shape[0], heads);
            e->unpermute_heads = heads;
        }
    }
    vd_sort_entries(w);
}

/* Undoes llama.cpp's permute() of q/k rows in place, as transformers' reverse_permute_weights
 * does. convert_hf_to_gguf.py stores HF.reshape(heads, 2, half, cols).swapaxes(1, 2): its RoPE
 * rotates adjacent pairs (2j, 2j+1) where HF rotates (j, j + half) within each head. So stored
 * row h*2*half + 2*j + i holds HF row h*2*half + i*half + j. */
static void vd_unpermute_rows(float *x, int64_t rows, int64_t cols, int32_t heads) {
    int64_t per_head = rows / heads, half = per_head / 2;
    size_t row_bytes = (size_t)cols * sizeof(float);
    /* rows move only within their head: one head's rows of scratch, not the whole matrix */
    float *tmp = mallocCheck((size_t)per_head * row_bytes);
    for (int64_t h = 0; h < heads; h++) {
        float *head = x + h * per_head * cols;
        memcpy(tmp, head, (size_t)per_head * row_bytes);
        for (int64_t j = 0; j < half; j++)
            for (int64_t i = 0; i < 2; i++) memcpy(head + (i * half + j) * cols, tmp + (2 * j + i) * cols, row_bytes);
    }
    free(tmp);
}

/* ----------------------------------------------------------------------------------------- */
/* public API */

vd_weights *vd_weights_open(const char *path) {
    vd_weights *w = callocCheck(1, sizeof(vd_weights));
    if (snprintf(w->path, sizeof(w->path), "%s", path) >= (int)sizeof(w->path)) vd_die("%s: path too long", path);
    struct stat sb;
    if (stat(path, &sb) != 0)
        vd_die("%s: cannot open (%s; expected a Hugging Face model directory or a .gguf file)", path, strerror(errno));
    if (S_ISDIR(sb.st_mode)) {
        vd_open_hf(w, path);
    } else if (S_ISREG(sb.st_mode) && (vd_gguf_has_suffix(path) || vd_gguf_has_magic(path))) {
        vd_open_gguf(w, path);
    } else {
        vd_die("%s: neither a directory nor a GGUF file (it is %s; expected a Hugging Face model directory with "
               "config.json, or a .gguf file)",
               path, vd_file_type_name((unsigned)sb.st_mode));
    }
    return w;
}

const struct cJSON *vd_weights_config(const vd_weights *w) { return w->config; }

const char *vd_weights_config_path(const vd_weights *w) { return w->config_path; }

int vd_weights_has(const vd_weights *w, const char *name) { return vd_find(w, name) != NULL; }

void vd_weights_read_f32(const vd_weights *w, const char *name, int32_t ndim, const int64_t *shape, float *dst) {
    const vd_w_entry *e = vd_find(w, name);
    if (!e) vd_die("%s: tensor %s: not found (the model has no tensor of that name)", w->source, name);
    const char *file = w->kind == VD_SRC_HF ? w->shards[e->shard].path : w->source;
    int32_t have_ndim = w->kind == VD_SRC_HF ? e->st->ndim : e->ndim;
    const int64_t *have = w->kind == VD_SRC_HF ? e->st->shape : e->shape;
    int same = have_ndim == ndim;
    for (int32_t d = 0; same && d < ndim; d++) same = have[d] == shape[d];
    if (!same) {
        char want_s[256], have_s[256];
        vd_shape_str(want_s, sizeof(want_s), ndim, shape);
        vd_shape_str(have_s, sizeof(have_s), have_ndim, have);
        vd_die("%s: tensor %s: expected %s, found %s", file, name, want_s, have_s);
    }
    if (w->kind == VD_SRC_HF) {
        if (e->st->dtype != VD_DTYPE_F32 && e->st->dtype != VD_DTYPE_F16 && e->st->dtype != VD_DTYPE_BF16)
            vd_die("%s: tensor %s: dtype %s is not supported (expected F32, F16 or BF16)", file, name,
                   e->st->dtype_name);
        vd_safetensors_read_f32(&w->shards[e->shard], e->st, dst);
        return;
    }
    vd_gguf_read_f32(&w->gguf, &w->gguf.tensors[e->gguf_index], dst);
    if (e->unpermute_heads) {
        int64_t cols = 1;
        for (int32_t d = 1; d < e->ndim; d++) cols *= e->shape[d];
        vd_unpermute_rows(dst, e->shape[0], cols, e->unpermute_heads);
    }
}

void vd_weights_close(vd_weights *w) {
    if (!w) return;
    for (int32_t s = 0; s < w->n_shards; s++) vd_safetensors_close(&w->shards[s]);
    free(w->shards);
    if (w->kind == VD_SRC_GGUF) vd_gguf_close(&w->gguf);
    for (int64_t i = 0; i < w->n_entries; i++) free(w->entries[i].name);
    free(w->entries);
    cJSON_Delete(w->config);
    free(w);
}
