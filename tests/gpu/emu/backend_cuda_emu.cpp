/* backend_cuda_emu.cpp: src/backend/cuda/backend_cuda.cu compiled by the host C++ compiler against the
 * emulation headers of this directory (which come first on the include path). The CUDA file
 * is used unchanged: its VD_LAUNCH / VD_DYNAMIC_SHARED macros are defined by vd_cuda_emu.h. */
#include "vd_cuda_emu.h"

#include "backend_cuda.cu"
