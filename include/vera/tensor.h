/* tensor.h: element types shared by every file format and backend, and the typed view of a
 * backend buffer that model code passes around. One enum for the whole project: safetensors,
 * GGUF and the backends all name dtypes with it. */
#ifndef VERA_TENSOR_H
#define VERA_TENSOR_H

#include <stddef.h>
#include <stdint.h>

typedef enum { VD_DTYPE_F32 = 0, VD_DTYPE_F16, VD_DTYPE_BF16, VD_DTYPE_OTHER } vd_dtype;

/* bytes per element (0 for VD_DTYPE_OTHER) */
static inline size_t vd_dtype_size(vd_dtype t) { return t == VD_DTYPE_F32 ? 4 : t == VD_DTYPE_OTHER ? 0 : 2; }
static inline const char *vd_dtype_name(vd_dtype t) {
    return t == VD_DTYPE_F32 ? "F32" : t == VD_DTYPE_F16 ? "F16" : t == VD_DTYPE_BF16 ? "BF16" : "other";
}

/* A frozen weight on a backend: data (device memory, owned by the model) + its element type
 * + its shape. Today every weight is VD_DTYPE_F32; part 7 (bf16) changes what the loader
 * stores and what the backend's gemm accepts, not the model code that carries these. */
typedef struct {
    void *data;        /* device pointer */
    vd_dtype dtype;
    int32_t ndim;
    int64_t shape[4];  /* row-major */
} vd_tensor;

static inline int64_t vd_tensor_numel(const vd_tensor *t) {
    int64_t n = 1;
    for (int32_t i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}
/* fp32 view; model code uses it where the backend op is fp32-only (every op but gemm_ex) */
static inline float *vd_tensor_f32(const vd_tensor *t) { return (float *)t->data; }

/* bfloat16 <-> fp32 on the host. bf16 is the top half of an fp32: widening is exact; narrowing
 * rounds to nearest, ties to even, as torch's .to(torch.bfloat16) and CUDA's __float2bfloat16
 * do (a NaN stays a quiet NaN with its sign; overflow rounds to inf like torch). */
static inline float vd_bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } v = {(uint32_t)h << 16};
    return v.f;
}
static inline uint16_t vd_bf16_from_f32(float f) {
    union { float f; uint32_t u; } v = {f};
    if ((v.u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((v.u >> 16) | 0x0040u); /* NaN: quiet */
    return (uint16_t)((v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16);
}
/* x rounded to the nearest bf16, kept as fp32 (what a bf16 GEMM input holds) */
static inline float vd_bf16_round(float x) { return vd_bf16_to_f32(vd_bf16_from_f32(x)); }

#endif
