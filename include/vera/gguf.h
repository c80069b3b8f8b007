/* gguf.h: reader for llama.cpp's GGUF files (versions 2 and 3, little-endian), below
 * weights.h. The file is mapped read-only; open validates the header, every metadata value
 * (arrays and nested arrays included), every tensor info and every tensor's data range, so a
 * malformed or truncated file dies on open with one line naming it. Tensors of F32, F16, BF16,
 * Q8_0, Q4_0 and Q4_1 are converted to fp32 on read, exactly as ggml dequantizes them.
 *
 *   "GGUF" u32 version, u64 n_tensors, u64 n_kv
 *   n_kv x (string key, u32 value type, value)          string = u64 length + bytes (no NUL)
 *   n_tensors x (string name, u32 n_dims, u64 ne[n_dims], u32 ggml type, u64 offset)
 *   padding to general.alignment (default 32), then the data section; offsets are into it. */
#ifndef VERA_GGUF_H
#define VERA_GGUF_H

#include <stddef.h>
#include <stdint.h>
#include "vera/common.h"

struct cJSON;

/* GGUF metadata value types */
enum {
    VD_GGUF_U8 = 0, VD_GGUF_I8 = 1, VD_GGUF_U16 = 2, VD_GGUF_I16 = 3, VD_GGUF_U32 = 4, VD_GGUF_I32 = 5,
    VD_GGUF_F32 = 6, VD_GGUF_BOOL = 7, VD_GGUF_STRING = 8, VD_GGUF_ARRAY = 9, VD_GGUF_U64 = 10,
    VD_GGUF_I64 = 11, VD_GGUF_F64 = 12,
};

/* ggml tensor types read here (the others are known by name and size only) */
enum {
    VD_GGML_F32 = 0, VD_GGML_F16 = 1, VD_GGML_Q4_0 = 2, VD_GGML_Q4_1 = 3, VD_GGML_Q8_0 = 8, VD_GGML_BF16 = 30,
};

typedef struct {
    char *key;              /* NUL-terminated copy */
    uint32_t type;          /* VD_GGUF_* */
    const uint8_t *value;   /* into the mapping: the scalar, the string's u64 length, or the array's first element */
    uint32_t array_type;    /* arrays: element type */
    uint64_t array_n;       /* arrays: element count */
} vd_gguf_kv;

typedef struct {
    char name[256];
    uint32_t type;          /* ggml type */
    int32_t n_dims;
    int64_t ne[4];          /* fastest-varying first: a row-major (out, in) matrix has ne = [in, out] */
    int64_t numel;
    uint64_t offset;        /* into the data section */
    uint64_t nbytes;
} vd_gguf_tensor;

typedef struct {
    char path[VD_PATH_MAX];
    void *map;
    size_t map_size;
    uint32_t version;
    uint64_t alignment;
    const uint8_t *data;    /* start of the data section */
    uint64_t data_size;
    vd_gguf_kv *kv;
    int64_t n_kv;
    vd_gguf_tensor *tensors; /* file order */
    int64_t n_tensors;
} vd_gguf;

/* 1 if the path ends in ".gguf" / the file starts with the GGUF magic. */
int vd_gguf_has_suffix(const char *path);
int vd_gguf_has_magic(const char *path);

/* Maps and validates the whole file; dies with "<path>: ..." on anything malformed, including a
 * tensor of a type number ggml does not define. */
void vd_gguf_open(vd_gguf *g, const char *path);
void vd_gguf_close(vd_gguf *g);

const vd_gguf_kv *vd_gguf_find_kv(const vd_gguf *g, const char *key);
/* Scalar getters: 0 when the key is absent; die naming the key when its type does not fit. */
int vd_gguf_get_int(const vd_gguf *g, const char *key, int64_t *out);   /* any integer type */
int vd_gguf_get_float(const vd_gguf *g, const char *key, double *out);  /* F32 / F64 (or an integer) */
int vd_gguf_get_string(const vd_gguf *g, const char *key, const char **s, uint64_t *len); /* not NUL-terminated */

const vd_gguf_tensor *vd_gguf_find(const vd_gguf *g, const char *name);
/* "Q4_K", ... or "unknown" */
const char *vd_gguf_type_name(uint32_t type);
/* 1 for the types vd_gguf_read_f32 converts */
int vd_gguf_type_supported(uint32_t type);
/* Dequantizes t (numel floats, ggml's element order) into dst; dies naming the tensor and its
 * type when the type is not one of the six above. */
void vd_gguf_read_f32(const vd_gguf *g, const vd_gguf_tensor *t, float *dst);

/* ---- llama (general.architecture "llama") ---- */

/* What vd_gguf_llama_hf_name returns besides the name: q and k rows need un-permuting;
 * LLAMA_CPP_ONLY is a tensor llama.cpp adds that has no HF counterpart (rope_freqs). */
enum {
    VD_GGUF_LLAMA_CPP_ONLY = -2, VD_GGUF_NO_HF_NAME = -1, VD_GGUF_PLAIN = 0, VD_GGUF_PERMUTED_Q = 1,
    VD_GGUF_PERMUTED_K = 2,
};
/* llama.cpp's name -> Hugging Face's (blk.3.attn_q.weight -> model.layers.3.self_attn.q_proj.weight). */
int vd_gguf_llama_hf_name(const char *gguf_name, char *out, size_t cap);
/* A config.json equivalent (HF's keys) from the llama.* metadata. Dies naming the file when
 * general.architecture is not "llama" or a required key is missing. Caller frees (cJSON_Delete). */
struct cJSON *vd_gguf_llama_config(const vd_gguf *g);

#endif
