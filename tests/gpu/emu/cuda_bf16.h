/* cuda_bf16.h (host emulation, tests/gpu/emu): the two bf16 intrinsics backend_cuda.cu uses,
 * with CUDA's semantics: __float2bfloat16_rn rounds to nearest even (NaN stays NaN),
 * __bfloat16_as_ushort gives the bits. The rounding is tensor.h's, which test_bf16 checks. */
#ifndef VD_EMU_CUDA_BF16_H
#define VD_EMU_CUDA_BF16_H

#include <stdint.h>

#include "vd_cuda_emu.h"
#include "vera/tensor.h"

typedef struct {
    unsigned short x; /* the bits */
} __nv_bfloat16;

static inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    __nv_bfloat16 h = {vd_bf16_from_f32(f)};
    return h;
}
static inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.x; }

#endif
