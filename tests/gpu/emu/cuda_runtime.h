/* cuda_runtime.h (host emulation, tests/gpu/emu): the runtime API subset backend_cuda.cu uses.
 * "Device" memory is host memory that is made inaccessible (mprotect) outside emulated kernels,
 * copies, cuBLAS and NCCL calls: host code that dereferences a device pointer crashes here as
 * it would on a GPU. Copies check that their kind matches where the pointers live. */
#ifndef VD_EMU_CUDA_RUNTIME_H
#define VD_EMU_CUDA_RUNTIME_H

#include "vd_cuda_emu.h"

typedef enum cudaError {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInsufficientDriver = 35,
    cudaErrorNoDevice = 100,
    cudaErrorInvalidDevice = 101,
    cudaErrorNoKernelImageForDevice = 209,
    cudaErrorInvalidResourceHandle = 400,
    cudaErrorNotReady = 600,
} cudaError_t;

typedef struct vd_emu_stream *cudaStream_t;

enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4,
};

#define cudaStreamNonBlocking 0x01

struct cudaDeviceProp {
    char name[256];
    size_t totalGlobalMem;
    int major, minor;
    int pciDomainID, pciBusID, pciDeviceID;
};

struct cudaFuncAttributes {
    int maxThreadsPerBlock;
};

cudaError_t cudaGetDeviceCount(int *count);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *prop, int device);
cudaError_t vd_emu_func_attributes(cudaFuncAttributes *attr);
template <typename T> cudaError_t cudaFuncGetAttributes(cudaFuncAttributes *attr, T *) {
    return vd_emu_func_attributes(attr);
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned int flags);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaStreamQuery(cudaStream_t stream); /* cudaErrorNotReady while work is pending */
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaMalloc(void **p, size_t bytes);
cudaError_t cudaFree(void *p);
cudaError_t cudaMallocHost(void **p, size_t bytes);
cudaError_t cudaFreeHost(void *p);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream);
cudaError_t cudaMemsetAsync(void *p, int value, size_t bytes, cudaStream_t stream);
cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes);
cudaError_t cudaGetLastError(void);
const char *cudaGetErrorName(cudaError_t e);
const char *cudaGetErrorString(cudaError_t e);

/* for the emulation's cuBLAS and NCCL: 1 if [p, p + bytes) lies inside one device allocation */
int vd_emu_is_device(const void *p, size_t bytes);
/* device memory readable and writable (1) or not (0) by the host; nests */
void vd_emu_device_access(int on);

#endif
