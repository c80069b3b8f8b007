/* safetensors.h: reader (mmap, header parsed with cJSON) and writer for the
 * Hugging Face safetensors format: u64 little-endian header length, JSON header, raw data. */
#ifndef VERA_SAFETENSORS_H
#define VERA_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>
#include "vera/common.h"
#include "vera/tensor.h"

typedef struct {
    char name[256];
    vd_dtype dtype;
    char dtype_name[16];  /* as in the header, e.g. "F32" */
    int32_t ndim;
    int64_t shape[8];
    uint64_t begin, end;  /* byte offsets into the data section */
} vd_st_tensor;

typedef struct vd_safetensors {
    char path[VD_PATH_MAX];
    void *map;             /* whole file, read-only mmap */
    size_t map_size;
    const uint8_t *data;   /* start of the data section */
    vd_st_tensor *tensors; /* n_tensors entries, header order */
    int32_t n_tensors;
} vd_safetensors;

/* Opens and validates (header bounds, offsets inside the file, dtype sizes x shape = bytes).
 * Dies with "<path>: ..." on any malformed file. */
void vd_safetensors_open(vd_safetensors *st, const char *path);
const vd_st_tensor *vd_safetensors_find(const vd_safetensors *st, const char *name);
int64_t vd_st_tensor_numel(const vd_st_tensor *t);
/* Converts F32/F16/BF16 to fp32 into dst (numel floats); dies on other dtypes naming the tensor. */
void vd_safetensors_read_f32(const vd_safetensors *st, const vd_st_tensor *t, float *dst);
/* Integer tensors (U8, I16, I32, I64) into dst (numel int64); dies on other dtypes naming the tensor. */
void vd_safetensors_read_int(const vd_safetensors *st, const vd_st_tensor *t, int64_t *dst);
void vd_safetensors_close(vd_safetensors *st);

typedef struct {
    const char *name;
    const float *data;   /* fp32, numel = product of shape */
    int32_t ndim;
    int64_t shape[4];
    const char *dtype;   /* NULL: F32 from data; else a safetensors dtype ("U8", "I16", "I32", "I64")
                          * and raw holds numel little-endian elements of it */
    const void *raw;
} vd_st_entry;

/* Writes the tensors (F32 unless an entry names its dtype) in the given order, with an optional {"__metadata__": {...}} object given
 * as key/value string pairs (n_meta pairs). Atomic (temp file + fsync + rename). */
void vd_safetensors_write_f32(const char *path, const vd_st_entry *entries, int32_t n,
                              const char *const *meta_kv, int32_t n_meta);

#endif
