/* gguf_dump: writes a GGUF model's tensors as fp32 safetensors, for tests/python/test_gguf.py.
 *
 *   gguf_dump MODEL.gguf OUT.safetensors         every tensor by its HF name and HF shape, read
 *                                                through vd_weights (dequantized, q/k un-permuted);
 *                                                __metadata__ "config" = the synthesized config.json
 *   gguf_dump MODEL.gguf OUT.safetensors --raw   every tensor by its GGUF name, dequantized only,
 *                                                shape = ne reversed (gguf-py's numpy shape);
 *                                                __metadata__ "types" = {name: ggml type name}
 * Errors are vera-dist's one-line errors (exit 1). */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vera/common.h"
#include "vera/gguf.h"
#include "vera/safetensors.h"
#include "vera/weights.h"

int main(int argc, char **argv) {
    if (argc < 3 || argc > 4 || (argc == 4 && strcmp(argv[3], "--raw") != 0)) {
        fprintf(stderr, "usage: %s MODEL.gguf OUT.safetensors [--raw]\n", argv[0]);
        return 2;
    }
    const char *model = argv[1], *out = argv[2];
    int raw = argc == 4;

    /* the tensor list comes from the GGUF layer: weights.h looks tensors up, it does not list them */
    vd_gguf g;
    vd_gguf_open(&g, model);
    vd_weights *w = raw ? NULL : vd_weights_open(model);
    vd_st_entry *entries = callocCheck((size_t)(g.n_tensors ? g.n_tensors : 1), sizeof(vd_st_entry));
    char **names = callocCheck((size_t)(g.n_tensors ? g.n_tensors : 1), sizeof(char *));
    cJSON *types = cJSON_CreateObject();
    int32_t n = 0;
    for (int64_t i = 0; i < g.n_tensors; i++) {
        const vd_gguf_tensor *t = &g.tensors[i];
        vd_st_entry *e = &entries[n];
        char hf[512];
        const char *name = t->name;
        if (!raw) {
            int kind = vd_gguf_llama_hf_name(t->name, hf, sizeof(hf));
            if (kind == VD_GGUF_LLAMA_CPP_ONLY) continue;
            vd_require(kind >= 0); /* vd_weights_open refused the file otherwise */
            name = hf;
        }
        names[n] = mallocCheck(strlen(name) + 1);
        strcpy(names[n], name);
        e->name = names[n];
        e->ndim = t->n_dims;
        for (int32_t d = 0; d < t->n_dims; d++) e->shape[d] = t->ne[t->n_dims - 1 - d];
        float *buf = mallocCheck((size_t)t->numel * sizeof(float));
        if (raw) vd_gguf_read_f32(&g, t, buf);
        else vd_weights_read_f32(w, name, e->ndim, e->shape, buf);
        e->data = buf;
        cJSON_AddStringToObject(types, name, vd_gguf_type_name(t->type));
        n++;
    }
    char *meta_json = raw ? cJSON_PrintUnformatted(types) : cJSON_PrintUnformatted(vd_weights_config(w));
    if (!meta_json) vd_die("out of memory printing the metadata of %s", model);
    const char *meta[2] = {raw ? "types" : "config", meta_json};
    vd_safetensors_write_f32(out, entries, n, meta, 1);

    for (int32_t i = 0; i < n; i++) {
        free((void *)entries[i].data);
        free(names[i]);
    }
    free(entries);
    free(names);
    free(meta_json);
    cJSON_Delete(types);
    vd_weights_close(w);
    vd_gguf_close(&g);
    return 0;
}
