/* vd_cuda_emu.h: a host emulation of the parts of CUDA that src/backend/cuda/backend_cuda.cu uses, so
 * that file's kernels and host code can be compiled with the host C++ compiler and run on a
 * machine without a GPU (tests/gpu/emu/README.md says what this proves and what it does not).
 *
 * Each kernel launch runs its blocks one after the other; the threads of a block are fibers
 * (ucontext) scheduled cooperatively: __syncthreads and the warp shuffles are the only points
 * where a thread yields, exactly the points where CUDA threads may communicate. A deadlock
 * (a barrier not every thread reaches, a shuffle with exited lanes) is reported and aborts.
 * __shared__ becomes static: one block runs at a time, so a static is that block's shared
 * memory. The dynamic shared array is filled with NaN bytes at the start of every block. */
#ifndef VD_CUDA_EMU_H
#define VD_CUDA_EMU_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <functional>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static

struct dim3 {
    unsigned int x, y, z;
    dim3(unsigned int a = 1, unsigned int b = 1, unsigned int c = 1) : x(a), y(b), z(c) {}
};
extern dim3 threadIdx, blockIdx, blockDim, gridDim;

void vd_emu_launch(dim3 grid, dim3 block, size_t shmem, const char *name, const std::function<void()> &body);
void *vd_emu_dynamic_shared(void);
void __syncthreads(void);
/* a warp shuffle: publish `in`, wait for the 32 lanes, read lane src_lane's value, wait again */
void vd_emu_warp_exchange(const void *in, void *out, size_t size, int src_lane);

template <typename T> T __shfl_xor_sync(unsigned int mask, T v, int lane_mask) {
    (void)mask;
    T r;
    vd_emu_warp_exchange(&v, &r, sizeof(T), (int)((threadIdx.x & 31u) ^ (unsigned int)lane_mask));
    return r;
}

#define VD_LAUNCH(kernel, grid, block, shmem, ...) \
    vd_emu_launch((grid), (block), (shmem), #kernel, [=]() { kernel(__VA_ARGS__); })
#define VD_DYNAMIC_SHARED(type, name) type *name = (type *)vd_emu_dynamic_shared()

#endif
