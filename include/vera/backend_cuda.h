/* backend_cuda.h: the CUDA backend (src/backend/cuda/backend_cuda.cu), a second vd_backend table.
 * Built only when CMake enables it (VERA_CUDA=AUTO/ON, docs/gpu.md); only the backend
 * selection in src/train/train.c and the GPU tests include this header.
 *
 * One MPI rank per GPU: rank k uses GPU (node-local rank) % (visible GPUs). Every buffer is
 * GPU memory from cudaMalloc (no managed memory); every op is ordered on one CUDA stream;
 * to_host / to_device, sum and sum_sq return after the data arrived (they synchronise), the
 * other ops are asynchronous. All tensors are fp32 (docs/gpu.md, "Precision": bf16 design).
 * The gradient all-reduce is ncclAllReduce on the device buffer when every rank has its own
 * GPU, or, where ranks share a GPU (which NCCL refuses) or VERA_CUDA_ALLREDUCE=mpi, MPI on a
 * host copy. VERA_CUDA_SYNC=1 synchronises after every op (to name the op of a GPU fault);
 * VERA_CUDA_ATTENTION=kernel replaces the cuBLAS attention products by direct kernels. */
#ifndef VERA_BACKEND_CUDA_H
#define VERA_BACKEND_CUDA_H

#include <stddef.h>

#include "vera/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

struct vd_comm;

/* Collective: every rank of comm must call it (comm may be NULL for one process without
 * MPI collectives). Picks this rank's GPU, creates the stream and the cuBLAS handle, then the
 * NCCL communicator (ncclUniqueId broadcast from rank 0 over MPI), and prints the GPU of each
 * rank. Returns NULL on every rank, with a one-line reason in err, when any rank has no usable
 * GPU (e.g. "no CUDA device (cudaGetDeviceCount: CUDA driver version is insufficient for CUDA
 * runtime version, error 35)", or a build for other architectures); once every rank has its
 * GPU, failures (NCCL initialisation) end all ranks through vd_die. A second call returns the
 * same table. */
const vd_backend *vd_backend_cuda_init(const struct vd_comm *comm, char *err, size_t errcap);

/* Frees the NCCL communicator, the cuBLAS handle and the stream (the buffers must have been
 * freed). Optional: process exit releases them too. */
void vd_backend_cuda_shutdown(void);

#ifdef __cplusplus
}
#endif

#endif
