/* backend_cuda.cu: the CUDA backend, a second vd_backend table (include/vera/backend.h).
 *
 * Every op mirrors its reference in src/backend/cpu.c, which defines the semantics; where the
 * two differ in rounding (summation order, expf/tanhf ulps, fused multiply-adds) the GPU tests
 * (tests/gpu/) state the bound. Design, in short:
 *   - memory: cudaMalloc (no managed memory), zero-filled like the CPU backend's alloc;
 *   - one CUDA stream orders every op; to_host, to_device, sum and sum_sq synchronise with it,
 *     so host code (train.c) sees finished results exactly where the CPU backend would;
 *   - GEMMs through cuBLAS, the row-major mapping below: fp32 (no TF32 unless --precision tf32
 *     turns it on), and gemm_ex's bf16 operands through cublasGemmEx (CUDA_R_16BF inputs,
 *     CUBLAS_COMPUTE_32F: fp32 accumulation, fp32 C);
 *   - everything else is a custom kernel; every reduction runs in a fixed order (warp
 *     shuffles in a fixed tree, block partials summed in index order, never atomics), so two
 *     identical runs give bit-identical results;
 *   - the gradient all-reduce is ncclAllReduce on the device buffer (counts in elements).
 *
 * Every CUDA, cuBLAS and NCCL call goes through cudaCheck / cublasCheck / ncclCheck, which
 * report file:line and end every rank through vd_die_at. Set VERA_CUDA_SYNC=1 to synchronise
 * after every op: an asynchronous kernel fault then names the op that caused it. */
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <nccl.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern "C" {
#include "vera/backend.h"
#include "vera/comm.h"
#include "vera/common.h"
}
#include "vera/backend_cuda.h"

#include "dropout_hash.h"
#include "../vblora_row.h"

/* ------------------------------------------------------------------------------------------ */
/* state */

typedef struct {
    int initialized;
    int device;                 /* this rank's GPU (index among the visible ones) */
    int device_count;
    cudaStream_t stream;
    cublasHandle_t cublas;
    ncclComm_t nccl;
    int use_nccl;               /* 0: no collective (one process) or MPI on a host copy */
    const vd_comm *comm;
    double *partials;           /* (VD_SUM_BLOCKS + 1) device scratch of sum / sum_sq */
    double *host_result;        /* pinned host double */
    float *host_reduce;         /* pinned host staging of the MPI fallback all-reduce */
    size_t host_reduce_count;
    int debug_sync;             /* VERA_CUDA_SYNC=1 */
    int attention_gemm;         /* 1 (default): attention through cuBLAS; VERA_CUDA_ATTENTION=kernel: 0 */
    float *cached_scores;       /* attention_cached's scores, grown on demand (generation) */
    size_t cached_scores_count;
    uint16_t *bf16_scratch;     /* gemm_ex: an fp32 operand rounded to bf16, grown on demand */
    size_t bf16_scratch_count;
    int tf32;                   /* --precision tf32: fp32 GEMMs with CUBLAS_COMPUTE_32F_FAST_TF32 */
    vd_backend table;
} cuda_state;

static cuda_state g;

/* ------------------------------------------------------------------------------------------ */
/* checked calls */

#define VD_SYNC_HINT " (an asynchronous error may come from an earlier op: rerun with VERA_CUDA_SYNC=1 to name it)"

static void vd_cuda_check(cudaError_t e, const char *what, const char *file, int line) {
    if (e == cudaSuccess) return;
    vd_die_at(file, line, "CUDA error %d %s in %s: %s%s", (int)e, cudaGetErrorName(e), what, cudaGetErrorString(e),
              g.debug_sync ? "" : VD_SYNC_HINT);
}

static void vd_cublas_check(cublasStatus_t s, const char *what, const char *file, int line) {
    if (s == CUBLAS_STATUS_SUCCESS) return;
    vd_die_at(file, line, "cuBLAS error %d %s in %s: %s", (int)s, cublasGetStatusName(s), what, cublasGetStatusString(s));
}

static void vd_nccl_check(ncclResult_t r, const char *what, const char *file, int line) {
    if (r == ncclSuccess) return;
    const char *last = g.nccl ? ncclGetLastError(g.nccl) : ncclGetLastError(NULL);
    vd_die_at(file, line, "NCCL error %d in %s: %s%s%s (HINT: NCCL_DEBUG=WARN or INFO prints NCCL's own diagnosis)",
              (int)r, what, ncclGetErrorString(r), last && last[0] ? ": " : "", last ? last : "");
}

#define cudaCheck(call) vd_cuda_check((call), #call, __FILE__, __LINE__)
#define cublasCheck(call) vd_cublas_check((call), #call, __FILE__, __LINE__)
#define ncclCheck(call) vd_nccl_check((call), #call, __FILE__, __LINE__)

/* after every kernel launch: launch errors now, execution errors now when VERA_CUDA_SYNC=1 */
#define VD_LAUNCHED(name) do { vd_cuda_check(cudaGetLastError(), "launch of " name, __FILE__, __LINE__); \
    if (g.debug_sync) vd_cuda_check(cudaStreamSynchronize(g.stream), "execution of " name, __FILE__, __LINE__); } while (0)

static void vd_cuda_require_init(void) {
    if (!g.initialized) vd_die("internal: CUDA backend op called before vd_backend_cuda_init");
}

/* ------------------------------------------------------------------------------------------ */
/* launch geometry and deterministic reductions */

/* Every launch and every dynamic shared array goes through these two macros, so that the host
 * emulation of this file (tests/gpu/emu: the kernels run on CPU fibers, to test their logic
 * where there is no GPU) can supply its own. Every kernel runs on the backend's stream. */
#ifndef VD_LAUNCH
#define VD_LAUNCH(kernel, grid, block, shmem, ...) kernel<<<(grid), (block), (shmem), g.stream>>>(__VA_ARGS__)
#define VD_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

#define VD_THREADS 256       /* elementwise kernels, attention */
#define VD_SUM_BLOCKS 256    /* fixed grid of sum / sum_sq: the order never depends on n */
#define VD_XENT_THREADS 512  /* softmax cross-entropy: one block per row */

static unsigned int vd_grid(size_t n, unsigned int block) {
    size_t b = (n + block - 1) / block;
    if (b < 1) b = 1;
    if (b > (size_t)1 << 30) b = (size_t)1 << 30; /* grid-stride loops cover the rest */
    return (unsigned int)b;
}

/* Tree sums over a warp: a fixed order, and with xor all lanes end with the same value. */
template <typename T> __device__ __forceinline__ T warp_allsum(T v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_allmax(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Block-wide sum / max in a fixed order; every thread of the block must call it (blockDim a
 * multiple of 32, at most 1024); every thread gets the result. scratch: 33 elements. */
template <typename T> __device__ T block_sum(T v, T *scratch) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (int)(blockDim.x >> 5);
    v = warp_allsum(v);
    __syncthreads(); /* scratch may still be read from a previous call */
    if (lane == 0) scratch[wid] = v;
    __syncthreads();
    if (wid == 0) {
        T t = lane < nw ? scratch[lane] : (T)0;
        t = warp_allsum(t);
        if (lane == 0) scratch[32] = t;
    }
    __syncthreads();
    return scratch[32];
}
__device__ float block_max(float v, float *scratch) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (int)(blockDim.x >> 5);
    v = warp_allmax(v);
    __syncthreads();
    if (lane == 0) scratch[wid] = v;
    __syncthreads();
    if (wid == 0) {
        float t = lane < nw ? scratch[lane] : -INFINITY;
        t = warp_allmax(t);
        if (lane == 0) scratch[32] = t;
    }
    __syncthreads();
    return scratch[32];
}

/* out[i] = sum_{j < n} w[j] * rows[j * stride + i] for i < hs, by the whole block: with hs <= the
 * block size, G = blockDim / hs thread groups each sum every G-th row and the groups' partials
 * (part: G * hs floats of shared memory) are added in group order; otherwise each thread owns
 * columns. Fixed order either way (deterministic). The attention forward (a . V) and the
 * backward's dq (dpre . K) are this one reduction. */
__device__ void block_weighted_rows(float *out, const float *w, const float *rows, size_t stride, int n, int hs,
                                    float *part) {
    const int tid = threadIdx.x, bd = blockDim.x;
    if (hs <= bd) {
        const int G = bd / hs, i = tid % hs, grp = tid / hs;
        if (grp < G) {
            float acc = 0.0f;
            for (int j = grp; j < n; j += G) acc += w[j] * rows[(size_t)j * stride + i];
            part[grp * hs + i] = acc;
        }
        __syncthreads();
        if (tid < hs) {
            float s = 0.0f;
            for (int gg = 0; gg < G; gg++) s += part[gg * hs + tid];
            out[tid] = s;
        }
    } else {
        for (int i = tid; i < hs; i += bd) {
            float acc = 0.0f;
            for (int j = 0; j < n; j++) acc += w[j] * rows[(size_t)j * stride + i];
            out[i] = acc;
        }
    }
}

/* ------------------------------------------------------------------------------------------ */
/* memory */

static void *cu_alloc(size_t bytes) {
    vd_cuda_require_init();
    size_t rounded = (bytes + 255) / 256 * 256;
    if (rounded == 0) rounded = 256;
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, rounded);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        size_t free_b = 0, total_b = 0;
        (void)cudaMemGetInfo(&free_b, &total_b);
        vd_die("out of GPU memory: cudaMalloc of %zu bytes failed on GPU %d (%s); %.2f of %.2f GiB free "
               "(HINT: lower batch_size or seq_len, or use more GPUs with a smaller batch_size)",
               bytes, g.device, cudaGetErrorString(e), (double)free_b / 1073741824.0, (double)total_b / 1073741824.0);
    }
    cudaCheck(cudaMemsetAsync(p, 0, rounded, g.stream)); /* zero-filled, as the CPU backend's */
    return p;
}

static size_t cu_device_free_bytes(void) {
    vd_cuda_require_init();
    size_t free_b = 0, total_b = 0;
    cudaCheck(cudaMemGetInfo(&free_b, &total_b));
    return free_b;
}

static void cu_free(void *p) {
    if (!p) return;
    cudaCheck(cudaStreamSynchronize(g.stream)); /* no op still using p */
    cudaCheck(cudaFree(p));
}

/* Synchronous, like the CPU backend's memcpy: the host buffer may be reused (to_device) or
 * read (to_host) as soon as the call returns. */
static void cu_to_device(void *dst, const void *src, size_t bytes) {
    if (!bytes) return;
    cudaCheck(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, g.stream));
    cudaCheck(cudaStreamSynchronize(g.stream));
}

static void cu_to_host(void *dst, const void *src, size_t bytes) {
    if (!bytes) return;
    cudaCheck(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, g.stream));
    cudaCheck(cudaStreamSynchronize(g.stream));
}

static void cu_zero(void *p, size_t bytes) {
    if (!bytes) return;
    cudaCheck(cudaMemsetAsync(p, 0, bytes, g.stream));
    VD_LAUNCHED("zero");
}

static void cu_copy(void *dst, const void *src, size_t bytes) {
    if (!bytes || dst == src) return;
    /* the CPU backend allows overlap (memmove); a device-to-device cudaMemcpy does not */
    uintptr_t d = (uintptr_t)dst, s = (uintptr_t)src;
    if (d < s + bytes && s < d + bytes) vd_die("internal: CUDA backend copy with overlapping ranges (%zu bytes)", bytes);
    cudaCheck(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, g.stream));
    VD_LAUNCHED("copy");
}

/* ------------------------------------------------------------------------------------------ */
/* dense */

/* Row-major GEMM on column-major cuBLAS.
 * The seam's gemm is row-major: C (M x N, leading dimension ldc) = alpha op(A) op(B) + beta C.
 * A row-major matrix with leading dimension ld, read column-major with the same ld, is its
 * transpose. So the buffer of C is, for cuBLAS, the N x M column-major matrix C^T, and
 *     C = op(A) op(B)   <=>   C^T = op(B)^T op(A)^T.
 * The buffer of B is, for cuBLAS, B^T (or op(B)^T directly when trans_b: B stored N x K
 * row-major is K x N column-major, and transposing that gives op(B)^T = B, N x K... i.e.
 * cuBLAS must apply "T" exactly when the row-major call asked for op(B) = B^T). Hence:
 *     cublasSgemm(transa = trans_b, transb = trans_a, m = N, n = M, k = K,
 *                 A := B with ldb, B := A with lda, C with ldc)
 * The operands swap places, the transpose flags pass through unchanged, and every leading
 * dimension stays what the row-major caller gave. (Check: trans_a = trans_b = 0: cuBLAS
 * computes the N x M product (B^T)(A^T) = (AB)^T, column-major in C's buffer = AB row-major.)
 * fp32 in, fp32 accumulation (CUBLAS_COMPUTE_32F), no TF32 unless --precision tf32 asks for
 * CUBLAS_COMPUTE_32F_FAST_TF32 (NVIDIA_TF32_OVERRIDE=0 is not needed). cuBLAS is deterministic for a fixed problem, GPU and library version (no atomics:
 * the default CUBLAS_ATOMICS_NOT_ALLOWED). */
static void cu_gemm_ex(int trans_a, int trans_b, int M, int N, int K, float alpha, const void *A, vd_dtype ta, int lda,
                       const void *B, vd_dtype tb, int ldb, float beta, float *C, int ldc);

static void cu_gemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                    const float *B, int ldb, float beta, float *C, int ldc) {
    cu_gemm_ex(trans_a, trans_b, M, N, K, alpha, A, VD_DTYPE_F32, lda, B, VD_DTYPE_F32, ldb, beta, C, ldc);
}

/* dst (rows x cols compact bf16) = round-to-nearest-even of src (rows x cols, leading dimension ld) */
__global__ void k_to_bf16(uint16_t *dst, const float *src, size_t n, size_t cols, size_t ld) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = __bfloat16_as_ushort(__float2bfloat16_rn(src[(i / cols) * ld + i % cols]));
}

static void cu_to_bf16_strided(uint16_t *dst, const float *src, size_t rows, size_t cols, size_t ld) {
    size_t n = rows * cols;
    if (!n) return;
    VD_LAUNCH(k_to_bf16, vd_grid(n, VD_THREADS), VD_THREADS, 0, dst, src, n, cols, ld);
    VD_LAUNCHED("to_bf16");
}

static void cu_to_bf16(void *dst, const float *src, size_t n) { cu_to_bf16_strided((uint16_t *)dst, src, n, 1, 1); }

static void cu_set_tf32(int on) {
    g.tf32 = on != 0;
    /* the attention's strided-batched fp32 GEMMs follow the handle's math mode */
    cublasCheck(cublasSetMathMode(g.cublas, on ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
}

/* The seam's gemm_ex (backend.h): both F32 is the fp32 GEMM (TF32 inputs under --precision
 * tf32); otherwise both operands enter as bf16 (an F32 one rounded by k_to_bf16 into
 * g.bf16_scratch, compact) and cublasGemmEx multiplies them with fp32 accumulation into fp32 C.
 * The same row-major mapping as above: operands swap, flags and leading dimensions pass through. */
static void cu_gemm_ex(int trans_a, int trans_b, int M, int N, int K, float alpha, const void *A, vd_dtype ta, int lda,
                       const void *B, vd_dtype tb, int ldb, float beta, float *C, int ldc) {
    if ((ta != VD_DTYPE_F32 && ta != VD_DTYPE_BF16) || (tb != VD_DTYPE_F32 && tb != VD_DTYPE_BF16))
        vd_die("internal: gemm_ex on %s x %s operands (expected F32 or BF16)", vd_dtype_name(ta), vd_dtype_name(tb));
    if (M <= 0 || N <= 0) return;
    cublasOperation_t opa = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, opb = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (ta == VD_DTYPE_F32 && tb == VD_DTYPE_F32) {
        cublasCheck(cublasGemmEx(g.cublas, opb, opa, N, M, K, &alpha, B, CUDA_R_32F, ldb, A, CUDA_R_32F, lda, &beta, C,
                                 CUDA_R_32F, ldc, g.tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F,
                                 CUBLAS_GEMM_DEFAULT));
    } else {
        /* stored shapes: A is M x K (K x M transposed), B is K x N (N x K transposed) */
        size_t ar = trans_a ? K : M, ac = trans_a ? M : K, br = trans_b ? N : K, bc = trans_b ? K : N;
        /* B's copy starts 16-byte aligned after A's (what cuBLAS's tensor-core kernels want) */
        size_t a_room = ta == VD_DTYPE_F32 ? (ar * ac + 7) / 8 * 8 : 0;
        size_t need = a_room + (tb == VD_DTYPE_F32 ? br * bc : 0);
        if (need > g.bf16_scratch_count) {
            cu_free(g.bf16_scratch);
            g.bf16_scratch = (uint16_t *)cu_alloc(sizeof(uint16_t) * need);
            g.bf16_scratch_count = need;
        }
        uint16_t *scratch = g.bf16_scratch;
        if (ta == VD_DTYPE_F32) {
            cu_to_bf16_strided(scratch, (const float *)A, ar, ac, (size_t)lda);
            A = scratch;
            lda = (int)ac;
            scratch += a_room;
        }
        if (tb == VD_DTYPE_F32) {
            cu_to_bf16_strided(scratch, (const float *)B, br, bc, (size_t)ldb);
            B = scratch;
            ldb = (int)bc;
        }
        cublasCheck(cublasGemmEx(g.cublas, opb, opa, N, M, K, &alpha, B, CUDA_R_16BF, ldb, A, CUDA_R_16BF, lda, &beta,
                                 C, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
    if (g.debug_sync) cudaCheck(cudaStreamSynchronize(g.stream));
}

__global__ void k_add_bias(float *out, const float *bias, size_t n, int OC) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] += bias[i % (size_t)OC];
}

static void cu_add_bias(float *out, const float *bias, int N, int OC) {
    size_t n = (size_t)N * OC;
    if (!n) return;
    VD_LAUNCH(k_add_bias, vd_grid(n, VD_THREADS), VD_THREADS, 0, out, bias, n, OC);
    VD_LAUNCHED("add_bias");
}

/* ------------------------------------------------------------------------------------------ */
/* transformer */

__global__ void k_encoder_forward(float *out, const int32_t *tokens, const float *wte, const float *wpe,
                                  const int32_t *pos, size_t n, int T, int C) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        size_t bt = i / (size_t)C, c = i % (size_t)C, t = pos ? (size_t)pos[bt] : bt % (size_t)T;
        const float e = wte[(size_t)tokens[bt] * C + c];
        out[i] = wpe ? e + wpe[t * C + c] : e; /* no wpe: positions come from RoPE (Llama) */
    }
}

static void cu_encoder_forward(float *out, const int32_t *tokens, const float *wte, const float *wpe,
                               const int32_t *pos, int B, int T, int C) {
    size_t n = (size_t)B * T * C;
    if (!n) return;
    VD_LAUNCH(k_encoder_forward, vd_grid(n, VD_THREADS), VD_THREADS, 0, out, tokens, wte, wpe, pos, n, T, C);
    VD_LAUNCHED("encoder_forward");
}

/* LayerNorm: one warp per row; mean and variance in double as on the CPU. */
__global__ void k_layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w,
                                    const float *b, int N, int C, float eps) {
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= N) return; /* the whole warp leaves together */
    const float *x = inp + (size_t)row * C;
    double s = 0.0;
    for (int c = lane; c < C; c += 32) s += x[c];
    const double m = warp_allsum(s) / C;
    double v = 0.0;
    for (int c = lane; c < C; c += 32) {
        double d = x[c] - m;
        v += d * d;
    }
    v = warp_allsum(v) / C;
    const float sc = (float)(1.0 / sqrt(v + eps));
    float *o = out + (size_t)row * C;
    for (int c = lane; c < C; c += 32) o[c] = ((float)(x[c] - m)) * sc * w[c] + b[c];
    if (lane == 0) {
        mean[row] = (float)m;
        rstd[row] = sc;
    }
}

static void cu_layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w,
                                 const float *b, int N, int C, float eps) {
    if (N <= 0) return;
    const int rows_per_block = VD_THREADS / 32;
    VD_LAUNCH(k_layernorm_forward, vd_grid((size_t)N, rows_per_block), VD_THREADS, 0, out, mean, rstd, inp, w, b, N,
              C, eps);
    VD_LAUNCHED("layernorm_forward");
}

/* dinp += s * (dnorm - mean(dnorm) - norm * mean(dnorm * norm)), one warp per row. */
__global__ void k_layernorm_backward(float *dinp, const float *dout, const float *inp, const float *w,
                                     const float *mean, const float *rstd, int N, int C) {
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= N) return;
    const float *x = inp + (size_t)row * C;
    const float *gr = dout + (size_t)row * C;
    float *dx = dinp + (size_t)row * C;
    const float m = mean[row], s = rstd[row];
    double a = 0.0, bsum = 0.0;
    for (int c = lane; c < C; c += 32) {
        float norm = (x[c] - m) * s;
        float dnorm = w[c] * gr[c];
        a += dnorm;
        bsum += dnorm * norm;
    }
    const float ma = (float)(warp_allsum(a) / C), mb = (float)(warp_allsum(bsum) / C);
    for (int c = lane; c < C; c += 32) {
        float norm = (x[c] - m) * s;
        float dnorm = w[c] * gr[c];
        dx[c] += s * (dnorm - ma - norm * mb);
    }
}

static void cu_layernorm_backward(float *dinp, const float *dout, const float *inp, const float *w, const float *mean,
                                  const float *rstd, int N, int C) {
    if (N <= 0) return;
    const int rows_per_block = VD_THREADS / 32;
    VD_LAUNCH(k_layernorm_backward, vd_grid((size_t)N, rows_per_block), VD_THREADS, 0, dinp, dout, inp, w, mean,
              rstd, N, C);
    VD_LAUNCHED("layernorm_backward");
}

/* RMSNorm (HF LlamaRMSNorm in fp32), as the CPU: one warp per row; the float squares summed in
 * double, var = (float)(sum / C), rstd = 1.0f / sqrtf(var + eps) in float (IEEE sqrt and
 * division on the GPU too: no fast math), out = (x * rstd) * w. */
__global__ void k_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *w, int N, int C, float eps) {
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= N) return; /* the whole warp leaves together */
    const float *x = inp + (size_t)row * C;
    double ss = 0.0;
    for (int c = lane; c < C; c += 32) ss += x[c] * x[c];
    const float var = (float)(warp_allsum(ss) / C);
    const float r = 1.0f / sqrtf(var + eps);
    float *o = out + (size_t)row * C;
    for (int c = lane; c < C; c += 32) o[c] = (x[c] * r) * w[c];
    if (lane == 0) rstd[row] = r;
}

static void cu_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *w, int N, int C, float eps) {
    if (N <= 0) return;
    const int rows_per_block = VD_THREADS / 32;
    VD_LAUNCH(k_rmsnorm_forward, vd_grid((size_t)N, rows_per_block), VD_THREADS, 0, out, rstd, inp, w, N, C, eps);
    VD_LAUNCHED("rmsnorm_forward");
}

/* y = x r w with r = (mean x^2 + eps)^(-1/2): dinp += r (w g - x r^2 mean(w g x)), as the CPU;
 * one warp per row, the mean in double. */
__global__ void k_rmsnorm_backward(float *dinp, const float *dout, const float *inp, const float *w,
                                   const float *rstd, int N, int C) {
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= N) return;
    const float *x = inp + (size_t)row * C;
    const float *gr = dout + (size_t)row * C;
    float *dx = dinp + (size_t)row * C;
    const float r = rstd[row];
    double acc = 0.0;
    for (int c = lane; c < C; c += 32) acc += w[c] * gr[c] * x[c];
    const float kk = r * r * (float)(warp_allsum(acc) / C);
    for (int c = lane; c < C; c += 32) dx[c] += r * (w[c] * gr[c] - x[c] * kk);
}

static void cu_rmsnorm_backward(float *dinp, const float *dout, const float *inp, const float *w, const float *rstd,
                                int N, int C) {
    if (N <= 0) return;
    const int rows_per_block = VD_THREADS / 32;
    VD_LAUNCH(k_rmsnorm_backward, vd_grid((size_t)N, rows_per_block), VD_THREADS, 0, dinp, dout, inp, w, rstd, N, C);
    VD_LAUNCHED("rmsnorm_backward");
}

/* Rotary embedding in place (HF rotate_half pairing): one thread per (row n, head h, i <
 * head_dim / 2), which owns the pair (x[i], x[i + head_dim/2]) of that head; the angle is the
 * fp32 product t * inv_freq[i] (t = pos[n], or n % T without pos), as the spec says; inverse rotates by -a. */
__global__ void k_rope(float *x, const float *inv_freq, const int32_t *pos, size_t n, int T, int n_heads,
                       int head_dim, int row_stride, int inverse) {
    const int half = head_dim / 2;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < n; idx += (size_t)gridDim.x * blockDim.x) {
        const int i = (int)(idx % (size_t)half);
        const size_t nh = idx / (size_t)half;
        const int h = (int)(nh % (size_t)n_heads);
        const size_t row = nh / (size_t)n_heads;
        const int t = pos ? pos[row] : (int)(row % (size_t)T);
        const float a = (float)t * inv_freq[i];
        const float c = cosf(a);
        const float s = inverse ? -sinf(a) : sinf(a);
        float *p = x + row * (size_t)row_stride + (size_t)h * head_dim;
        const float x1 = p[i], x2 = p[i + half];
        p[i] = x1 * c - x2 * s;
        p[i + half] = x2 * c + x1 * s;
    }
}

static void cu_rope(float *x, const float *inv_freq, const int32_t *pos, int B, int T, int n_heads, int head_dim,
                    int row_stride, int inverse) {
    if (B <= 0 || T <= 0 || n_heads <= 0 || head_dim < 2) return;
    const size_t n = (size_t)B * T * n_heads * (size_t)(head_dim / 2);
    VD_LAUNCH(k_rope, vd_grid(n, VD_THREADS), VD_THREADS, 0, x, inv_freq, pos, n, T, n_heads, head_dim,
              row_stride, inverse);
    VD_LAUNCHED("rope");
}

/* Causal attention with grouped-query heads (vd_attn_shape, include/vera/backend.h), shared by
 * both paths. Query head h of token row r = b*T + t is at q + r*q_stride + h*hs; it reads kv
 * head h / group (group = n_head / n_kv_head: the heads of a group are consecutive, as in HF's
 * repeat_kv) at k, v + r*kv_stride + kvh*hs; out / dout rows are contiguous, n_head*hs floats;
 * att (B, n_head, T, T) keeps the softmax (zeros above the diagonal). GPT-2 passes its fused
 * qkv: q = qkv, k = qkv + C, v = qkv + 2C, strides 3C, group 1, hs = C / n_head. */
typedef struct {
    int T, NH, group, hs;
    size_t qs, kvs, oc; /* row strides of q (and dq), k / v (and dk / dv), out / dout */
    const int32_t *pos; /* (B*T) device positions or NULL: query t sees keys t - pos[t] .. t */
} vd_attn_dims;

/* First key query t of sequence b sees: t - pos[t], clamped to [0, t]; 0 without pos (the CPU's
 * attn_first_key). Keys before it get weight 0, so packed examples do not see each other. */
__device__ int attn_first_key(const int32_t *pos, size_t b, int T, int t) {
    if (!pos) return 0;
    const int lo = t - pos[b * (size_t)T + t];
    return lo < 0 ? 0 : lo > t ? t : lo;
}

static vd_attn_dims vd_attn_dims_of(const vd_attn_shape *s) {
    if (s->n_head < 1 || s->n_kv_head < 1 || s->n_head % s->n_kv_head != 0 || s->head_dim < 1 ||
        s->q_stride < s->head_dim || s->kv_stride < s->head_dim)
        vd_die("internal: attention shape n_head %d, n_kv_head %d, head_dim %d, q_stride %d, kv_stride %d "
               "(need n_head %% n_kv_head == 0 and strides >= head_dim)",
               s->n_head, s->n_kv_head, s->head_dim, s->q_stride, s->kv_stride);
    vd_attn_dims d;
    d.T = s->T;
    d.NH = s->n_head;
    d.group = s->n_head / s->n_kv_head;
    d.hs = s->head_dim;
    d.qs = (size_t)s->q_stride;
    d.kvs = (size_t)s->kv_stride;
    d.oc = (size_t)s->n_head * s->head_dim;
    d.pos = s->pos;
    return d;
}

/* The direct kernels, straightforward and exact: one block per (b, h, t) query row.
 * The scores of the row are written straight into att (global memory, so any T works), the
 * max and the sum are block reductions, and the weighted sum of values splits the keys over
 * G = blockDim / hs groups of threads whose partial sums are added in group order.
 * These direct kernels are the reference (VERA_CUDA_ATTENTION=kernel); the default path runs
 * the products through cuBLAS strided-batched GEMMs (below). A fused flash-style kernel would
 * be the next step for speed (docs/gpu.md). */
__global__ void k_attention_forward(float *out, float *att, const float *q, const float *k, const float *v,
                                    vd_attn_dims d, float scale) {
    VD_DYNAMIC_SHARED(float, sh); /* [hs] the query, [blockDim] partial sums */
    __shared__ float red[33];
    const int T = d.T, NH = d.NH, hs = d.hs, tid = threadIdx.x, bd = blockDim.x;
    const size_t row = blockIdx.x; /* (b * NH + h) * T + t */
    const int t = (int)(row % (size_t)T), h = (int)((row / (size_t)T) % (size_t)NH), kvh = h / d.group;
    const size_t b = row / ((size_t)T * NH), kvs = d.kvs;
    const int lo = attn_first_key(d.pos, b, T, t);
    float *sq = sh, *part = sh + hs;
    const float *qr = q + (b * T + t) * d.qs + (size_t)h * hs;
    for (int i = tid; i < hs; i += bd) sq[i] = qr[i];
    __syncthreads();
    const float *kbase = k + b * T * kvs + (size_t)kvh * hs;
    const float *vbase = v + b * T * kvs + (size_t)kvh * hs;
    float *a = att + row * T;
    float mx = -INFINITY;
    for (int t2 = lo + tid; t2 <= t; t2 += bd) {
        const float *kr = kbase + (size_t)t2 * kvs;
        float s = 0.0f;
        for (int i = 0; i < hs; i++) s += sq[i] * kr[i];
        s *= scale;
        a[t2] = s;
        mx = fmaxf(mx, s);
    }
    mx = block_max(mx, red);
    float sum = 0.0f;
    for (int t2 = lo + tid; t2 <= t; t2 += bd) {
        float e = expf(a[t2] - mx);
        a[t2] = e;
        sum += e;
    }
    sum = block_sum(sum, red);
    const float inv = 1.0f / sum;
    for (int t2 = lo + tid; t2 <= t; t2 += bd) a[t2] *= inv;
    for (int t2 = tid; t2 < lo; t2 += bd) a[t2] = 0.0f;
    for (int t2 = t + 1 + tid; t2 < T; t2 += bd) a[t2] = 0.0f;
    __syncthreads(); /* the whole row of a is visible to the block */
    float *o = out + (b * T + t) * d.oc + (size_t)h * hs;
    block_weighted_rows(o, a + lo, vbase + (size_t)lo * kvs, kvs, t + 1 - lo, hs, part);
}

/* Backward, part 1: one block per query row (b, h, t). da = dout . v (through the weighted
 * sum), then datt := the gradient of the pre-softmax scores, dpre = a (da - a . da) * scale,
 * kept in datt for part 2, and dq = sum over keys of dpre k (this row owns dq: no races). */
__global__ void k_attention_backward_q(float *dq, float *datt, const float *dout, const float *k, const float *v,
                                       const float *att, vd_attn_dims d, float scale) {
    VD_DYNAMIC_SHARED(float, sh); /* [hs] dout of this row, [blockDim] partial sums */
    __shared__ float red[33];
    const int T = d.T, NH = d.NH, hs = d.hs, tid = threadIdx.x, bd = blockDim.x;
    const size_t row = blockIdx.x;
    const int t = (int)(row % (size_t)T), h = (int)((row / (size_t)T) % (size_t)NH), kvh = h / d.group;
    const size_t b = row / ((size_t)T * NH), kvs = d.kvs;
    const int lo = attn_first_key(d.pos, b, T, t);
    float *sgo = sh, *part = sh + hs;
    const float *go = dout + (b * T + t) * d.oc + (size_t)h * hs;
    for (int i = tid; i < hs; i += bd) sgo[i] = go[i];
    __syncthreads();
    const float *kbase = k + b * T * kvs + (size_t)kvh * hs;
    const float *vbase = v + b * T * kvs + (size_t)kvh * hs;
    const float *a = att + row * T;
    float *da = datt + row * T;
    float dot = 0.0f;
    for (int t2 = lo + tid; t2 <= t; t2 += bd) {
        const float *vr = vbase + (size_t)t2 * kvs;
        float s = 0.0f;
        for (int i = 0; i < hs; i++) s += sgo[i] * vr[i];
        da[t2] = s;
        dot += a[t2] * s;
    }
    dot = block_sum(dot, red);
    for (int t2 = lo + tid; t2 <= t; t2 += bd) da[t2] = a[t2] * (da[t2] - dot) * scale;
    for (int t2 = tid; t2 < lo; t2 += bd) da[t2] = 0.0f; /* part 2 reads the whole lower triangle */
    __syncthreads();
    float *dqr = dq + (b * T + t) * d.qs + (size_t)h * hs;
    block_weighted_rows(dqr, da + lo, kbase + (size_t)lo * kvs, kvs, t + 1 - lo, hs, part);
}

/* Backward, part 2: one block per key row (b, kv head kvh, t2), which owns dk and dv of that kv
 * head at position t2, summed over the query heads h of its group (in head order, then queries):
 * dk = sum_h sum_{t >= t2} dpre_h[t, t2] q_{t,h}, dv = sum_h sum_{t >= t2} a_h[t, t2] dout_{t,h}.
 * With group 1 the order is GPT-2's: one head, the queries. */
__global__ void k_attention_backward_kv(float *dk, float *dv, const float *datt, const float *dout, const float *q,
                                        const float *att, vd_attn_dims d) {
    VD_DYNAMIC_SHARED(float, sh); /* [2 * blockDim] partial sums of dk and dv */
    const int T = d.T, NH = d.NH, hs = d.hs, group = d.group, NKV = NH / group, tid = threadIdx.x, bd = blockDim.x;
    const size_t row = blockIdx.x; /* (b * NKV + kvh) * T + t2 */
    const int t2 = (int)(row % (size_t)T), kvh = (int)((row / (size_t)T) % (size_t)NKV);
    const size_t b = row / ((size_t)T * NKV), qs = d.qs, oc = d.oc;
    const size_t TT = (size_t)T * T;
    float *dkr = dk + (b * T + t2) * d.kvs + (size_t)kvh * hs;
    float *dvr = dv + (b * T + t2) * d.kvs + (size_t)kvh * hs;
    if (hs <= bd) {
        const int G = bd / hs, i = tid % hs, grp = tid / hs;
        float *pk = sh, *pv = sh + bd;
        if (grp < G) {
            float ak = 0.0f, av = 0.0f;
            for (int h = kvh * group; h < (kvh + 1) * group; h++) {
                const float *qbase = q + b * T * qs + (size_t)h * hs;
                const float *gobase = dout + b * T * oc + (size_t)h * hs;
                const float *acol = att + (b * NH + h) * TT + t2; /* a[t, t2] = acol[t * T] */
                const float *dcol = datt + (b * NH + h) * TT + t2;
                for (int t = t2 + grp; t < T; t += G) {
                    ak += dcol[(size_t)t * T] * qbase[(size_t)t * qs + i];
                    av += acol[(size_t)t * T] * gobase[(size_t)t * oc + i];
                }
            }
            pk[grp * hs + i] = ak;
            pv[grp * hs + i] = av;
        }
        __syncthreads();
        if (tid < hs) {
            float sk = 0.0f, sv = 0.0f;
            for (int gg = 0; gg < G; gg++) {
                sk += pk[gg * hs + tid];
                sv += pv[gg * hs + tid];
            }
            dkr[tid] = sk;
            dvr[tid] = sv;
        }
    } else {
        for (int i = tid; i < hs; i += bd) {
            float ak = 0.0f, av = 0.0f;
            for (int h = kvh * group; h < (kvh + 1) * group; h++) {
                const float *qbase = q + b * T * qs + (size_t)h * hs;
                const float *gobase = dout + b * T * oc + (size_t)h * hs;
                const float *acol = att + (b * NH + h) * TT + t2;
                const float *dcol = datt + (b * NH + h) * TT + t2;
                for (int t = t2; t < T; t++) {
                    ak += dcol[(size_t)t * T] * qbase[(size_t)t * qs + i];
                    av += acol[(size_t)t * T] * gobase[(size_t)t * oc + i];
                }
            }
            dkr[i] = ak;
            dvr[i] = av;
        }
    }
}

static unsigned int vd_attention_rows(int B, int T, int NH) {
    size_t rows = (size_t)B * NH * T;
    if (rows > 0x7fffffffu) vd_die("attention: %zu rows (B * n_head * T) exceed one CUDA grid", rows);
    return (unsigned int)rows;
}

/* ---- attention through cuBLAS (the default): strided-batched GEMMs over heads straight on the
 * strided q, k, v layouts, around row kernels for the causal softmax and its backward. The kv
 * head of query head h = kvh * group + j is kvh, so for each sequence b and each position j in
 * a group, one call batches the n_kv_head query heads h = j, group + j, 2 group + j, ...: their
 * q columns are group * hs apart, their kv heads hs apart, their att blocks group * T * T
 * apart, all constant strides. With group 1 (GPT-2) that is one call per sequence over all
 * heads, as before. dK and dV sum the group's heads: the call for j = 0 writes them (beta 0),
 * the others add (beta 1), in head order, as the CPU's GEMM path does. The products span the
 * full T x T (the masked half included, as the CPU's GEMM path does); the kernels write exact
 * zeros above the diagonal and before each query's first key (packed examples, pos) so the
 * masked entries contribute nothing. VERA_CUDA_ATTENTION=kernel
 * selects the direct kernels above instead (the reference the GPU tests compare both against). */

/* row-major strided-batched GEMM, the mapping of cu_gemm applied to each of `batch` problems */
static void cu_gemm_strided_batched(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A,
                                    int lda, long long stride_a, const float *B, int ldb, long long stride_b,
                                    float beta, float *C, int ldc, long long stride_c, int batch) {
    if (M <= 0 || N <= 0 || batch <= 0) return;
    cublasCheck(cublasSgemmStridedBatched(g.cublas, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                                          trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, &alpha, B, ldb, stride_b, A,
                                          lda, stride_a, &beta, C, ldc, stride_c, batch));
    if (g.debug_sync) cudaCheck(cudaStreamSynchronize(g.stream));
}

/* att row (b, h, t) := softmax of scale * scores over keys lo .. t (in place), zeros elsewhere */
__global__ void k_causal_softmax_forward(float *att, const int32_t *pos, int T, int NH, float scale) {
    __shared__ float red[33];
    const int tid = threadIdx.x, bd = blockDim.x;
    const size_t row = blockIdx.x;
    const int t = (int)(row % (size_t)T), lo = attn_first_key(pos, row / ((size_t)T * NH), T, t);
    float *a = att + row * T;
    float mx = -INFINITY;
    for (int t2 = lo + tid; t2 <= t; t2 += bd) {
        float s = a[t2] * scale;
        a[t2] = s;
        mx = fmaxf(mx, s);
    }
    mx = block_max(mx, red);
    float sum = 0.0f;
    for (int t2 = lo + tid; t2 <= t; t2 += bd) {
        float e = expf(a[t2] - mx);
        a[t2] = e;
        sum += e;
    }
    sum = block_sum(sum, red);
    const float inv = 1.0f / sum;
    for (int t2 = lo + tid; t2 <= t; t2 += bd) a[t2] *= inv;
    for (int t2 = tid; t2 < lo; t2 += bd) a[t2] = 0.0f;
    for (int t2 = t + 1 + tid; t2 < T; t2 += bd) a[t2] = 0.0f;
}

/* datt row := a (datt - a . datt) * scale on keys lo .. t, 0 elsewhere */
__global__ void k_causal_softmax_backward(float *datt, const float *att, const int32_t *pos, int T, int NH,
                                          float scale) {
    __shared__ float red[33];
    const int tid = threadIdx.x, bd = blockDim.x;
    const size_t row = blockIdx.x;
    const int t = (int)(row % (size_t)T), lo = attn_first_key(pos, row / ((size_t)T * NH), T, t);
    const float *a = att + row * T;
    float *da = datt + row * T;
    float dot = 0.0f;
    for (int t2 = lo + tid; t2 <= t; t2 += bd) dot += a[t2] * da[t2];
    dot = block_sum(dot, red);
    for (int t2 = lo + tid; t2 <= t; t2 += bd) da[t2] = a[t2] * (da[t2] - dot) * scale;
    for (int t2 = tid; t2 < lo; t2 += bd) da[t2] = 0.0f;
    for (int t2 = t + 1 + tid; t2 < T; t2 += bd) da[t2] = 0.0f;
}

/* cuBLAS takes int leading dimensions */
static int vd_ld(size_t ld) {
    if (ld > 0x7fffffffu) vd_die("attention: row stride %zu exceeds cuBLAS's int leading dimension", ld);
    return (int)ld;
}

static void attention_forward_gemm(float *out, float *att, const float *q, const float *k, const float *v,
                                   const vd_attn_shape *s, const vd_attn_dims *d) {
    const int T = d->T, NH = d->NH, hs = d->hs, group = d->group, NKV = NH / group;
    const int qs = vd_ld(d->qs), kvs = vd_ld(d->kvs), oc = vd_ld(d->oc);
    const long long TT = (long long)T * T;
    for (int b = 0; b < s->B; b++) /* scores_h = Q_h K_kvh^T */
        for (int j = 0; j < group; j++)
            cu_gemm_strided_batched(0, 1, T, T, hs, 1.0f, q + (size_t)b * T * qs + (size_t)j * hs, qs,
                                    (long long)group * hs, k + (size_t)b * T * kvs, kvs, hs, 0.0f,
                                    att + ((size_t)b * NH + j) * TT, T, group * TT, NKV);
    VD_LAUNCH(k_causal_softmax_forward, vd_attention_rows(s->B, T, NH), VD_THREADS, 0, att, d->pos, T, NH,
              1.0f / sqrtf((float)hs));
    VD_LAUNCHED("attention_forward (softmax)");
    for (int b = 0; b < s->B; b++) /* out_h = att_h V_kvh */
        for (int j = 0; j < group; j++)
            cu_gemm_strided_batched(0, 0, T, hs, T, 1.0f, att + ((size_t)b * NH + j) * TT, T, group * TT,
                                    v + (size_t)b * T * kvs, kvs, hs, 0.0f, out + (size_t)b * T * oc + (size_t)j * hs,
                                    oc, (long long)group * hs, NKV);
}

static void attention_backward_gemm(float *dq, float *dk, float *dv, float *datt, const float *dout, const float *q,
                                    const float *k, const float *v, const float *att, const vd_attn_shape *s,
                                    const vd_attn_dims *d) {
    const int T = d->T, NH = d->NH, hs = d->hs, group = d->group, NKV = NH / group;
    const int qs = vd_ld(d->qs), kvs = vd_ld(d->kvs), oc = vd_ld(d->oc);
    const long long TT = (long long)T * T, hstride = (long long)group * hs;
    for (int b = 0; b < s->B; b++) {
        const float *vb = v + (size_t)b * T * kvs;
        float *dvb = dv + (size_t)b * T * kvs;
        for (int j = 0; j < group; j++) {
            const float *go = dout + (size_t)b * T * oc + (size_t)j * hs;
            const size_t ab = ((size_t)b * NH + j) * TT;
            /* datt_h = dout_h V_kvh^T;  dV_kvh (+)= att_h^T dout_h */
            cu_gemm_strided_batched(0, 1, T, T, hs, 1.0f, go, oc, hstride, vb, kvs, hs, 0.0f, datt + ab, T,
                                    group * TT, NKV);
            cu_gemm_strided_batched(1, 0, T, hs, T, 1.0f, att + ab, T, group * TT, go, oc, hstride, j ? 1.0f : 0.0f,
                                    dvb, kvs, hs, NKV);
        }
    }
    VD_LAUNCH(k_causal_softmax_backward, vd_attention_rows(s->B, T, NH), VD_THREADS, 0, datt, att, d->pos, T, NH,
              1.0f / sqrtf((float)hs));
    VD_LAUNCHED("attention_backward (softmax)");
    for (int b = 0; b < s->B; b++) {
        const float *kb = k + (size_t)b * T * kvs;
        float *dkb = dk + (size_t)b * T * kvs;
        for (int j = 0; j < group; j++) {
            const float *qb = q + (size_t)b * T * qs + (size_t)j * hs, *dp = datt + ((size_t)b * NH + j) * TT;
            /* dQ_h = dpre_h K_kvh;  dK_kvh (+)= dpre_h^T Q_h */
            cu_gemm_strided_batched(0, 0, T, hs, T, 1.0f, dp, T, group * TT, kb, kvs, hs, 0.0f,
                                    dq + (size_t)b * T * qs + (size_t)j * hs, qs, hstride, NKV);
            cu_gemm_strided_batched(1, 0, T, hs, T, 1.0f, dp, T, group * TT, qb, qs, hstride, j ? 1.0f : 0.0f, dkb,
                                    kvs, hs, NKV);
        }
    }
}

static void cu_attention_forward(float *out, float *att, const float *q, const float *k, const float *v,
                                 const vd_attn_shape *s) {
    const vd_attn_dims d = vd_attn_dims_of(s);
    if (s->B <= 0 || s->T <= 0) return;
    if (g.attention_gemm) {
        attention_forward_gemm(out, att, q, k, v, s, &d);
        return;
    }
    const float scale = 1.0f / sqrtf((float)d.hs);
    const size_t shmem = sizeof(float) * ((size_t)d.hs + VD_THREADS);
    VD_LAUNCH(k_attention_forward, vd_attention_rows(s->B, s->T, d.NH), VD_THREADS, shmem, out, att, q, k, v, d,
              scale);
    VD_LAUNCHED("attention_forward");
}

/* the CUDA kernels keep the whole softmax (B, NH, T, T) for the backward */
static size_t cu_attention_saved_floats(const vd_attn_shape *s) {
    return (size_t)s->B * s->n_head * s->T * s->T;
}

static void cu_attention_backward(float *dq, float *dk, float *dv, float *datt, const float *dout, const float *q,
                                  const float *k, const float *v, const float *att, const vd_attn_shape *s) {
    const vd_attn_dims d = vd_attn_dims_of(s);
    if (s->B <= 0 || s->T <= 0) return;
    if (g.attention_gemm) {
        attention_backward_gemm(dq, dk, dv, datt, dout, q, k, v, att, s, &d);
        return;
    }
    const float scale = 1.0f / sqrtf((float)d.hs);
    VD_LAUNCH(k_attention_backward_q, vd_attention_rows(s->B, s->T, d.NH), VD_THREADS,
              sizeof(float) * ((size_t)d.hs + VD_THREADS), dq, datt, dout, k, v, att, d, scale);
    VD_LAUNCHED("attention_backward (queries)");
    VD_LAUNCH(k_attention_backward_kv, vd_attention_rows(s->B, s->T, s->n_kv_head), VD_THREADS,
              sizeof(float) * 2 * (size_t)VD_THREADS, dk, dv, datt, dout, q, att, d);
    VD_LAUNCHED("attention_backward (keys, values)");
}

#define GELU_SCALE 0.7978845608028654f /* sqrt(2/pi) */
/* Generation against a KV cache: one block per (query i, head h), the direct forward kernel's
 * steps with the key range 0 .. pos0 + i of the cache. The scores of row (i, h) live in
 * scores + (i * NH + h) * Tk (device scratch kept by the backend; Tk = pos0 + n_new). */
__global__ void k_attention_cached(float *out, float *scores, const float *q, const float *kc, const float *vc,
                                   vd_attn_dims d, int pos0, int Tk, float scale) {
    VD_DYNAMIC_SHARED(float, sh); /* [hs] the query, [blockDim] partial sums */
    __shared__ float red[33];
    const int NH = d.NH, hs = d.hs, tid = threadIdx.x, bd = blockDim.x;
    const size_t row = blockIdx.x; /* i * NH + h */
    const int h = (int)(row % (size_t)NH), i = (int)(row / (size_t)NH), kvh = h / d.group, t = pos0 + i;
    const size_t kvs = d.kvs;
    float *sq = sh, *part = sh + hs;
    const float *qr = q + (size_t)i * d.qs + (size_t)h * hs;
    for (int j = tid; j < hs; j += bd) sq[j] = qr[j];
    __syncthreads();
    const float *kbase = kc + (size_t)kvh * hs, *vbase = vc + (size_t)kvh * hs;
    float *a = scores + row * (size_t)Tk;
    float mx = -INFINITY;
    for (int t2 = tid; t2 <= t; t2 += bd) {
        const float *kr = kbase + (size_t)t2 * kvs;
        float s = 0.0f;
        for (int j = 0; j < hs; j++) s += sq[j] * kr[j];
        s *= scale;
        a[t2] = s;
        mx = fmaxf(mx, s);
    }
    mx = block_max(mx, red);
    float sum = 0.0f;
    for (int t2 = tid; t2 <= t; t2 += bd) {
        float e = expf(a[t2] - mx);
        a[t2] = e;
        sum += e;
    }
    sum = block_sum(sum, red);
    const float inv = 1.0f / sum;
    for (int t2 = tid; t2 <= t; t2 += bd) a[t2] *= inv;
    __syncthreads(); /* the whole row of a is visible to the block */
    float *o = out + (size_t)i * d.oc + (size_t)h * hs;
    block_weighted_rows(o, a, vbase, kvs, t + 1, hs, part);
}

static void cu_attention_cached(float *out, const float *q, const float *kcache, const float *vcache, int n_new,
                                int pos0, const vd_attn_shape *s) {
    const vd_attn_dims d = vd_attn_dims_of(s);
    if (n_new <= 0) return;
    if (pos0 < 0) vd_die("internal: attention_cached at position %d", pos0);
    const int Tk = pos0 + n_new;
    const size_t rows = (size_t)n_new * d.NH, need = rows * (size_t)Tk;
    if (rows > 0x7fffffffu) vd_die("attention_cached: %zu rows (n_new * n_head) exceed one CUDA grid", rows);
    if (need > g.cached_scores_count) {
        cu_free(g.cached_scores);
        g.cached_scores = (float *)cu_alloc(sizeof(float) * need);
        g.cached_scores_count = need;
    }
    const float scale = 1.0f / sqrtf((float)d.hs);
    const size_t shmem = sizeof(float) * ((size_t)d.hs + VD_THREADS);
    VD_LAUNCH(k_attention_cached, (unsigned int)rows, VD_THREADS, shmem, out, g.cached_scores, q, kcache, vcache, d,
              pos0, Tk, scale);
    VD_LAUNCHED("attention_cached");
}

__global__ void k_gelu_forward(float *out, const float *inp, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float x = inp[i];
        out[i] = 0.5f * x * (1.0f + tanhf(GELU_SCALE * (x + 0.044715f * x * x * x)));
    }
}

__global__ void k_gelu_backward(float *dinp, const float *inp, const float *dout, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float x = inp[i];
        float u = GELU_SCALE * (x + 0.044715f * x * x * x);
        float th = tanhf(u);
        float sech2 = 1.0f - th * th;
        float local = 0.5f * (1.0f + th) + 0.5f * x * sech2 * GELU_SCALE * (1.0f + 3.0f * 0.044715f * x * x);
        dinp[i] = local * dout[i];
    }
}

static void cu_gelu_forward(float *out, const float *inp, size_t n) {
    if (!n) return;
    VD_LAUNCH(k_gelu_forward, vd_grid(n, VD_THREADS), VD_THREADS, 0, out, inp, n);
    VD_LAUNCHED("gelu_forward");
}

static void cu_gelu_backward(float *dinp, const float *inp, const float *dout, size_t n) {
    if (!n) return;
    VD_LAUNCH(k_gelu_backward, vd_grid(n, VD_THREADS), VD_THREADS, 0, dinp, inp, dout, n);
    VD_LAUNCHED("gelu_backward");
}

/* SwiGLU, as the CPU: silu(g) = g / (1 + expf(-g)); silu'(g) = sig (1 + g (1 - sig)), sig =
 * 1 / (1 + expf(-g)). For g far below 0, expf overflows to inf and sig, silu are 0: no NaN.
 * Each thread reads its element's inputs before writing, so outputs may alias inputs. */
__global__ void k_swiglu_forward(float *out, const float *gate, const float *up, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float gt = gate[i];
        out[i] = gt / (1.0f + expf(-gt)) * up[i];
    }
}

__global__ void k_swiglu_backward(float *dgate, float *dup, const float *gate, const float *up, const float *dout,
                                  size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float gt = gate[i], u = up[i], d = dout[i];
        const float e = expf(-gt);
        const float sig = 1.0f / (1.0f + e);
        const float silu = gt / (1.0f + e);
        dgate[i] = d * u * (sig * (1.0f + gt * (1.0f - sig)));
        dup[i] = d * silu;
    }
}

static void cu_swiglu_forward(float *out, const float *gate, const float *up, size_t n) {
    if (!n) return;
    VD_LAUNCH(k_swiglu_forward, vd_grid(n, VD_THREADS), VD_THREADS, 0, out, gate, up, n);
    VD_LAUNCHED("swiglu_forward");
}

static void cu_swiglu_backward(float *dgate, float *dup, const float *gate, const float *up, const float *dout,
                               size_t n) {
    if (!n) return;
    VD_LAUNCH(k_swiglu_backward, vd_grid(n, VD_THREADS), VD_THREADS, 0, dgate, dup, gate, up, dout, n);
    VD_LAUNCHED("swiglu_backward");
}

__global__ void k_add(float *out, const float *a, const float *b, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = a[i] + b[i];
}

__global__ void k_accumulate(float *a, const float *b, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        a[i] += b[i];
}

static void cu_add(float *out, const float *a, const float *b, size_t n) {
    if (!n) return;
    VD_LAUNCH(k_add, vd_grid(n, VD_THREADS), VD_THREADS, 0, out, a, b, n);
    VD_LAUNCHED("add");
}

static void cu_accumulate(float *a, const float *b, size_t n) {
    if (!n) return;
    VD_LAUNCH(k_accumulate, vd_grid(n, VD_THREADS), VD_THREADS, 0, a, b, n);
    VD_LAUNCHED("accumulate");
}

/* One block per row. probs may be logits (the model does it in place): every thread reads
 * the target's logit before the first barrier, and each element is overwritten only by the
 * thread that read it. The sum of exponentials is in double, as on the CPU. */
__global__ void k_softmax_xent_forward(float *losses, float *probs, const float *logits, const int32_t *targets,
                                       int V) {
    __shared__ float redf[33];
    __shared__ double redd[33];
    const size_t n = blockIdx.x;
    const int tid = threadIdx.x, bd = blockDim.x;
    const float *l = logits + n * V;
    float *p = probs + n * V;
    const int32_t tn = targets[n];
    const float lt = tn == VD_TARGET_NONE ? 0.0f : l[tn];
    float mx = -INFINITY;
    for (int v = tid; v < V; v += bd) mx = fmaxf(mx, l[v]);
    mx = block_max(mx, redf);
    double sum = 0.0;
    for (int v = tid; v < V; v += bd) {
        float e = expf(l[v] - mx);
        p[v] = e;
        sum += e;
    }
    sum = block_sum(sum, redd);
    const float inv = (float)(1.0 / sum);
    for (int v = tid; v < V; v += bd) p[v] *= inv;
    /* log-sum-exp form keeps the loss exact even when the target's probability underflows */
    if (tid == 0) losses[n] = tn == VD_TARGET_NONE ? 0.0f : (float)(log(sum) + mx - lt);
}

static void cu_softmax_xent_forward(float *losses, float *probs, const float *logits, const int32_t *targets, int N,
                                    int V) {
    if (N <= 0) return;
    VD_LAUNCH(k_softmax_xent_forward, (unsigned int)N, VD_XENT_THREADS, 0, losses, probs, logits, targets, V);
    VD_LAUNCHED("softmax_xent_forward");
}

__global__ void k_softmax_xent_backward(float *dlogits, const float *probs, const int32_t *targets, float dloss,
                                        size_t n, int V) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        size_t row = i / (size_t)V;
        int v = (int)(i % (size_t)V);
        const int32_t tr = targets[row];
        float d = tr == VD_TARGET_NONE ? 0.0f : probs[i] * dloss; /* no loss here: no gradient */
        if (v == tr) d -= dloss;
        dlogits[i] = d;
    }
}

static void cu_softmax_xent_backward(float *dlogits, const float *probs, const int32_t *targets, float dloss, int N,
                                     int V) {
    size_t n = (size_t)N * V;
    if (!n) return;
    VD_LAUNCH(k_softmax_xent_backward, vd_grid(n, VD_THREADS), VD_THREADS, 0, dlogits, probs, targets, dloss, n, V);
    VD_LAUNCHED("softmax_xent_backward");
}

/* Deterministic sums: a fixed grid of VD_SUM_BLOCKS blocks, each thread a fixed strided subset
 * in double, block tree sums, then one block sums the partials in index order. The order
 * depends on n only, never on timing. (It differs from the CPU's serial order: the results
 * agree to double rounding, far below float resolution.) */
__global__ void k_sum_partial(double *partials, const float *x, size_t n, int squared) {
    __shared__ double red[33];
    double s = 0.0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        double v = x[i];
        s += squared ? v * v : v;
    }
    s = block_sum(s, red);
    if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

__global__ void k_sum_final(double *out, const double *partials, int np) {
    __shared__ double red[33];
    double s = 0.0;
    for (int i = threadIdx.x; i < np; i += blockDim.x) s += partials[i];
    s = block_sum(s, red);
    if (threadIdx.x == 0) *out = s;
}

static double cu_reduce(const float *x, size_t n, int squared) {
    if (!n) return 0.0;
    VD_LAUNCH(k_sum_partial, VD_SUM_BLOCKS, VD_THREADS, 0, g.partials, x, n, squared);
    VD_LAUNCHED("sum (partials)");
    VD_LAUNCH(k_sum_final, 1, VD_THREADS, 0, g.partials + VD_SUM_BLOCKS, g.partials, VD_SUM_BLOCKS);
    VD_LAUNCHED("sum (final)");
    cudaCheck(cudaMemcpyAsync(g.host_result, g.partials + VD_SUM_BLOCKS, sizeof(double), cudaMemcpyDeviceToHost,
                              g.stream));
    cudaCheck(cudaStreamSynchronize(g.stream));
    return *g.host_result;
}

static double cu_sum(const float *x, size_t n) { return cu_reduce(x, n, 0); }
static double cu_sum_sq(const float *x, size_t n) { return cu_reduce(x, n, 1); }

/* ------------------------------------------------------------------------------------------ */
/* adapter vectors */

__global__ void k_scale_cols(float *out, const float *inp, const float *vec, size_t n, int C, int add) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float v = inp[i] * vec[i % (size_t)C];
        if (add) out[i] += v;
        else out[i] = v;
    }
}

static void cu_scale_cols(float *out, const float *inp, const float *vec, int N, int C) {
    size_t n = (size_t)N * C;
    if (!n) return;
    VD_LAUNCH(k_scale_cols, vd_grid(n, VD_THREADS), VD_THREADS, 0, out, inp, vec, n, C, 0);
    VD_LAUNCHED("scale_cols");
}

static void cu_scale_cols_add(float *out, const float *inp, const float *vec, int N, int C) {
    size_t n = (size_t)N * C;
    if (!n) return;
    VD_LAUNCH(k_scale_cols, vd_grid(n, VD_THREADS), VD_THREADS, 0, out, inp, vec, n, C, 1);
    VD_LAUNCHED("scale_cols_add");
}

__global__ void k_scale_rows(float *out, const float *inp, const float *vec, size_t n, int C) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = inp[i] * vec[i / (size_t)C];
}

static void cu_scale_rows(float *out, const float *inp, const float *vec, int N, int C) {
    size_t n = (size_t)N * C;
    if (!n) return;
    VD_LAUNCH(k_scale_rows, vd_grid(n, VD_THREADS), VD_THREADS, 0, out, inp, vec, n, C);
    VD_LAUNCHED("scale_rows");
}

/* db[i] += sum_k B[i,k] d[k] M[i,k]: one warp per row i. */
__global__ void k_vera_db(float *db, const float *M, const float *Bs, const float *d, int out, int r) {
    const int lane = threadIdx.x & 31;
    const int i = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (i >= out) return;
    const float *m = M + (size_t)i * r, *bb = Bs + (size_t)i * r;
    float s = 0.0f;
    for (int k = lane; k < r; k += 32) s += bb[k] * d[k] * m[k];
    s = warp_allsum(s);
    if (lane == 0) db[i] += s;
}

/* dd[k] += sum_i b[i] B[i,k] M[i,k]: one block per column k, a block tree sum over i. */
__global__ void k_vera_dd(float *dd, const float *M, const float *Bs, const float *b, int out, int r) {
    __shared__ float red[33];
    const int k = blockIdx.x;
    float s = 0.0f;
    for (int i = threadIdx.x; i < out; i += blockDim.x) s += b[i] * Bs[(size_t)i * r + k] * M[(size_t)i * r + k];
    s = block_sum(s, red);
    if (threadIdx.x == 0) dd[k] += s;
}

static void cu_vera_vector_grads(float *db, float *dd, const float *M, const float *Bs, const float *b, const float *d,
                                 int out, int r) {
    if (out <= 0 || r <= 0) return;
    const int rows_per_block = VD_THREADS / 32;
    VD_LAUNCH(k_vera_db, vd_grid((size_t)out, rows_per_block), VD_THREADS, 0, db, M, Bs, d, out, r);
    VD_LAUNCHED("vera_vector_grads (b)");
    VD_LAUNCH(k_vera_dd, (unsigned int)r, VD_THREADS, 0, dd, M, Bs, b, out, r);
    VD_LAUNCHED("vera_vector_grads (d)");
}

/* The CPU backend's counter-based mask, bit for bit (src/backend/cuda/dropout_hash.h). */
__global__ void k_dropout(float *out, const float *inp, size_t n, int C, float p, float keep_scale, uint64_t seed,
                          uint64_t row0) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint64_t row = row0 + (uint64_t)(i / (size_t)C), col = (uint64_t)(i % (size_t)C);
        out[i] = vd_hd_dropout_apply(inp[i], p, keep_scale, seed, row, col);
    }
}

static void cu_dropout(float *out, const float *inp, int N, int C, float p, uint64_t seed, uint64_t row0) {
    size_t n = (size_t)N * C;
    if (!n) return;
    const float keep_scale = 1.0f / (1.0f - p); /* computed once, on the host, as the CPU does */
    VD_LAUNCH(k_dropout, vd_grid(n, VD_THREADS), VD_THREADS, 0, out, inp, n, C, p, keep_scale, seed, row0);
    VD_LAUNCHED("dropout");
}

/* ------------------------------------------------------------------------------------------ */
/* VB-LoRA: the CPU backend's semantics; the per-row pieces are shared (src/backend/vblora_row.h) */

/* one thread per row of logits (rows are few: r * in / vector_length per matrix) */
__global__ void k_vblora_topk(int32_t *idx, float *w, const float *logits, int n, int nv, int k) {
    for (int s = blockIdx.x * blockDim.x + threadIdx.x; s < n; s += gridDim.x * blockDim.x)
        vd_vblora_topk_row(idx + (size_t)s * k, w + (size_t)s * k, logits + (size_t)s * nv, nv, k);
}

static void cu_vblora_topk(int32_t *idx, float *w, const float *logits, int n, int nv, int k) {
    if (n <= 0) return;
    VD_LAUNCH(k_vblora_topk, vd_grid((size_t)n, VD_THREADS), VD_THREADS, 0, idx, w, logits, n, nv, k);
    VD_LAUNCHED("vblora_topk");
}

/* one thread per composed element (s, l), j ascending as the CPU */
__global__ void k_vblora_compose(float *out, const float *bank, const int32_t *idx, const float *w,
                                 vd_vblora_shape sh) {
    size_t n = (size_t)sh.n_outer * sh.n_inner * sh.L;
    for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (size_t)gridDim.x * blockDim.x) {
        size_t s = e / (size_t)sh.L;
        int l = (int)(e % (size_t)sh.L);
        const int32_t *ix = idx + s * sh.k;
        const float *ws = w + s * sh.k;
        float acc = 0.0f;
        for (int j = 0; j < sh.k; j++) acc += ws[j] * bank[(size_t)ix[j] * sh.L + l];
        out[(s / sh.n_inner) * sh.so + (s % sh.n_inner) * sh.si + (size_t)l * sh.sl] = acc;
    }
}

static void cu_vblora_compose(float *out, const float *bank, const int32_t *idx, const float *w,
                              const vd_vblora_shape *sh) {
    size_t n = (size_t)sh->n_outer * sh->n_inner * sh->L;
    if (!n) return;
    VD_LAUNCH(k_vblora_compose, vd_grid(n, VD_THREADS), VD_THREADS, 0, out, bank, idx, w, *sh);
    VD_LAUNCHED("vblora_compose");
}

/* logits: one thread per sub-vector (it owns its row) */
__global__ void k_vblora_dlogits(float *dlogits, const float *dmat, const float *bank, const int32_t *idx,
                                 const float *w, vd_vblora_shape sh) {
    int n = sh.n_outer * sh.n_inner;
    for (int s = blockIdx.x * blockDim.x + threadIdx.x; s < n; s += gridDim.x * blockDim.x) {
        const float *g = dmat + (size_t)(s / sh.n_inner) * sh.so + (size_t)(s % sh.n_inner) * sh.si;
        vd_vblora_dlogits_row(dlogits + (size_t)s * sh.nv, g, sh.sl, bank, sh.L, idx + (size_t)s * sh.k,
                              w + (size_t)s * sh.k, sh.k);
    }
}

/* bank: one thread per column l, summing s, j ascending (the CPU's order, no atomics). Only L
 * threads: the loop is n_outer * n_inner * k long, small next to the layer's GEMMs. */
__global__ void k_vblora_dbank(float *dbank, const float *dmat, const int32_t *idx, const float *w,
                               vd_vblora_shape sh) {
    int n = sh.n_outer * sh.n_inner;
    for (int l = blockIdx.x * blockDim.x + threadIdx.x; l < sh.L; l += gridDim.x * blockDim.x) {
        for (int s = 0; s < n; s++) {
            float g = dmat[(size_t)(s / sh.n_inner) * sh.so + (size_t)(s % sh.n_inner) * sh.si + (size_t)l * sh.sl];
            for (int j = 0; j < sh.k; j++)
                dbank[(size_t)idx[(size_t)s * sh.k + j] * sh.L + l] += w[(size_t)s * sh.k + j] * g;
        }
    }
}

static void cu_vblora_compose_backward(float *dlogits, float *dbank, const float *dmat, const float *bank,
                                       const int32_t *idx, const float *w, const vd_vblora_shape *sh) {
    int n = sh->n_outer * sh->n_inner;
    if (n <= 0 || sh->L <= 0) return;
    VD_LAUNCH(k_vblora_dlogits, vd_grid((size_t)n, VD_THREADS), VD_THREADS, 0, dlogits, dmat, bank, idx, w, *sh);
    VD_LAUNCHED("vblora_compose_backward (logits)");
    VD_LAUNCH(k_vblora_dbank, vd_grid((size_t)sh->L, VD_THREADS), VD_THREADS, 0, dbank, dmat, idx, w, *sh);
    VD_LAUNCHED("vblora_compose_backward (bank)");
}

/* ------------------------------------------------------------------------------------------ */
/* optimizer */

/* torch.optim.AdamW (single-tensor path), as the CPU backend; the step constants come from the
 * host with the CPU's float expressions. */
__global__ void k_adamw(float *params, const float *grads, float *m, float *v, size_t n, float decay, float beta1,
                        float beta2, float eps, float step_size, float bc2_sqrt, float grad_scale) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float gr = grads[i] * grad_scale;
        float p = params[i] * decay;
        float mi = m[i], vi = v[i];
        mi += (1.0f - beta1) * (gr - mi);
        vi = vi * beta2 + (1.0f - beta2) * gr * gr;
        m[i] = mi;
        v[i] = vi;
        float denom = sqrtf(vi) / bc2_sqrt + eps;
        params[i] = p - step_size * (mi / denom);
    }
}

static void cu_adamw(float *params, const float *grads, float *m, float *v, size_t n, float lr, float beta1,
                     float beta2, float eps, float weight_decay, int32_t t, float grad_scale) {
    if (!n) return;
    float bc1 = 1.0f - powf(beta1, (float)t);
    float bc2_sqrt = sqrtf(1.0f - powf(beta2, (float)t));
    float step_size = lr / bc1;
    float decay = 1.0f - lr * weight_decay;
    VD_LAUNCH(k_adamw, vd_grid(n, VD_THREADS), VD_THREADS, 0, params, grads, m, v, n, decay, beta1, beta2, eps,
              step_size, bc2_sqrt, grad_scale);
    VD_LAUNCHED("adamw");
}

/* ------------------------------------------------------------------------------------------ */
/* the gradient all-reduce */

/* Waits for the NCCL all-reduce on g.stream with the deadline of MPI's collectives
 * (vd_comm.timeout_s; docs/multinode.md, "Lost and frozen nodes"): a rank that never arrives
 * leaves the kernel spinning on the GPU, so after the deadline, or when another rank starts a
 * roll call, the communicator is aborted (which stops the kernel) and the roll call over MPI
 * names the ranks that did not answer. Without a deadline: cudaStreamSynchronize. Compiled
 * here, not yet run on GPUs (one GPU per rank is needed for NCCL). */
static void cu_nccl_wait(void) {
    double limit = g.comm ? g.comm->timeout_s : 0.0;
    if (limit <= 0) {
        cudaCheck(cudaStreamSynchronize(g.stream));
        return;
    }
    double t0 = vd_time_s(), last_probe = t0;
    for (;;) {
        cudaError_t e = cudaStreamQuery(g.stream);
        if (e == cudaSuccess) return;
        if (e != cudaErrorNotReady) cudaCheck(e);
        ncclResult_t async = ncclSuccess;
        ncclCheck(ncclCommGetAsyncError(g.nccl, &async));
        ncclCheck(async);
        double now = vd_time_s();
        int roll = 0;
        if (now - last_probe > 1e-3) {
            last_probe = now;
            roll = vd_comm_roll_called(g.comm);
        }
        if (roll || now - t0 > limit) {
            (void)ncclCommAbort(g.nccl);
            g.nccl = NULL;
            g.use_nccl = 0;
            vd_comm_lost(g.comm, "gradient all-reduce (NCCL)", now - t0);
        }
        usleep(100);
    }
}

static void cu_allreduce_sum(float *buf, size_t count) {
    if (!count) return;
    if (g.use_nccl) {
        /* in place on the device buffer, ordered after the backward on the same stream; count
         * in elements (ncclFloat), the same on every rank */
        ncclCheck(ncclAllReduce(buf, buf, count, ncclFloat, ncclSum, g.nccl, g.stream));
        cu_nccl_wait();
        return;
    }
    if (!g.comm || g.comm->world == 1) return; /* one process: the sum is the buffer */
    /* several ranks share a GPU (NCCL refuses that): MPI on a pinned host copy */
    if (count > g.host_reduce_count) {
        if (g.host_reduce) cudaCheck(cudaFreeHost(g.host_reduce));
        g.host_reduce = NULL;
        cudaCheck(cudaMallocHost((void **)&g.host_reduce, sizeof(float) * count));
        g.host_reduce_count = count;
    }
    cu_to_host(g.host_reduce, buf, sizeof(float) * count);
    vd_comm_allreduce_sum_f32(g.comm, g.host_reduce, count);
    cu_to_device(buf, g.host_reduce, sizeof(float) * count);
}

/* ------------------------------------------------------------------------------------------ */
/* construction */

#define VD_STR2(x) #x
#define VD_STR(x) VD_STR2(x)
#ifdef __CUDA_ARCH_LIST__
#define VD_ARCH_LIST VD_STR(__CUDA_ARCH_LIST__)
#else
#define VD_ARCH_LIST "(unknown)"
#endif

static void cuda_release(void) {
    if (g.nccl) (void)ncclCommDestroy(g.nccl);
    if (g.cublas) (void)cublasDestroy(g.cublas);
    if (g.partials) (void)cudaFree(g.partials);
    if (g.cached_scores) (void)cudaFree(g.cached_scores);
    if (g.bf16_scratch) (void)cudaFree(g.bf16_scratch);
    if (g.host_result) (void)cudaFreeHost(g.host_result);
    if (g.host_reduce) (void)cudaFreeHost(g.host_reduce);
    if (g.stream) (void)cudaStreamDestroy(g.stream);
    (void)cudaGetLastError();
    memset(&g, 0, sizeof(g));
}

/* This rank alone: find and open its GPU. Returns 0 with a one-line reason on failure. */
static int cuda_open_device(const vd_comm *comm, char *why, size_t cap) {
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        snprintf(why, cap, "no CUDA device (cudaGetDeviceCount: %s, error %d)", cudaGetErrorString(e), (int)e);
        (void)cudaGetLastError();
        return 0;
    }
    if (count < 1) {
        const char *vis = getenv("CUDA_VISIBLE_DEVICES");
        snprintf(why, cap, "no CUDA device (cudaGetDeviceCount: 0 devices%s%s)", vis ? "; CUDA_VISIBLE_DEVICES=" : "",
                 vis ? vis : "");
        return 0;
    }
    g.device_count = count;
    g.device = (comm ? comm->local_rank : 0) % count;
    e = cudaSetDevice(g.device);
    if (e != cudaSuccess) {
        snprintf(why, cap, "cannot use GPU %d (cudaSetDevice: %s, error %d)", g.device, cudaGetErrorString(e), (int)e);
        (void)cudaGetLastError();
        return 0;
    }
    cudaDeviceProp prop;
    e = cudaGetDeviceProperties(&prop, g.device);
    if (e != cudaSuccess) {
        snprintf(why, cap, "cannot query GPU %d (cudaGetDeviceProperties: %s, error %d)", g.device,
                 cudaGetErrorString(e), (int)e);
        (void)cudaGetLastError();
        return 0;
    }
    /* a build for other architectures fails at the first kernel: say so now, in one line */
    cudaFuncAttributes fa;
    e = cudaFuncGetAttributes(&fa, k_add);
    if (e != cudaSuccess) {
        snprintf(why, cap,
                 "GPU %d (%s, compute capability %d.%d) cannot run this build's kernels, compiled for "
                 "architectures %s (%s; HINT: rebuild with -DCMAKE_CUDA_ARCHITECTURES=%d%d)",
                 g.device, prop.name, prop.major, prop.minor, VD_ARCH_LIST, cudaGetErrorString(e), prop.major,
                 prop.minor);
        (void)cudaGetLastError();
        return 0;
    }
    e = cudaStreamCreateWithFlags(&g.stream, cudaStreamNonBlocking);
    if (e != cudaSuccess) {
        snprintf(why, cap, "GPU %d: cudaStreamCreate: %s (error %d)", g.device, cudaGetErrorString(e), (int)e);
        (void)cudaGetLastError();
        g.stream = NULL;
        return 0;
    }
    cublasStatus_t s = cublasCreate(&g.cublas);
    if (s != CUBLAS_STATUS_SUCCESS) {
        snprintf(why, cap, "GPU %d: cublasCreate: %s", g.device, cublasGetStatusString(s));
        g.cublas = NULL;
        return 0;
    }
    if (cudaMalloc((void **)&g.partials, sizeof(double) * (VD_SUM_BLOCKS + 1)) != cudaSuccess ||
        cudaMallocHost((void **)&g.host_result, sizeof(double)) != cudaSuccess) {
        snprintf(why, cap, "GPU %d: cannot allocate the reduction scratch", g.device);
        (void)cudaGetLastError();
        return 0;
    }
    return 1;
}

static void cuda_fill_table(vd_backend *t) {
    t->name = "cuda";
    t->alloc = cu_alloc;
    t->free = cu_free;
    t->device_free_bytes = cu_device_free_bytes;
    t->to_device = cu_to_device;
    t->to_host = cu_to_host;
    t->zero = cu_zero;
    t->copy = cu_copy;
    t->gemm = cu_gemm;
    t->gemm_ex = cu_gemm_ex;
    t->to_bf16 = cu_to_bf16;
    t->set_tf32 = cu_set_tf32;
    t->add_bias = cu_add_bias;
    t->encoder_forward = cu_encoder_forward;
    t->layernorm_forward = cu_layernorm_forward;
    t->layernorm_backward = cu_layernorm_backward;
    t->rmsnorm_forward = cu_rmsnorm_forward;
    t->rmsnorm_backward = cu_rmsnorm_backward;
    t->rope = cu_rope;
    t->attention_forward = cu_attention_forward;
    t->attention_saved_floats = cu_attention_saved_floats;
    t->attention_backward = cu_attention_backward;
    t->attention_cached = cu_attention_cached;
    t->gelu_forward = cu_gelu_forward;
    t->gelu_backward = cu_gelu_backward;
    t->swiglu_forward = cu_swiglu_forward;
    t->swiglu_backward = cu_swiglu_backward;
    t->add = cu_add;
    t->accumulate = cu_accumulate;
    t->softmax_xent_forward = cu_softmax_xent_forward;
    t->softmax_xent_backward = cu_softmax_xent_backward;
    t->sum = cu_sum;
    t->scale_cols = cu_scale_cols;
    t->scale_cols_add = cu_scale_cols_add;
    t->scale_rows = cu_scale_rows;
    t->vera_vector_grads = cu_vera_vector_grads;
    t->dropout = cu_dropout;
    t->vblora_topk = cu_vblora_topk;
    t->vblora_compose = cu_vblora_compose;
    t->vblora_compose_backward = cu_vblora_compose_backward;
    t->sum_sq = cu_sum_sq;
    t->adamw = cu_adamw;
    t->allreduce_sum = cu_allreduce_sum;
}

extern "C" const vd_backend *vd_backend_cuda_init(const vd_comm *comm, char *err, size_t errcap) {
    if (g.initialized) return &g.table;
    char why[768] = "";
    memset(&g, 0, sizeof(g));
    const char *sync_env = getenv("VERA_CUDA_SYNC");
    g.debug_sync = sync_env && sync_env[0] && strcmp(sync_env, "0") != 0;
    const char *att_env = getenv("VERA_CUDA_ATTENTION");
    if (att_env && strcmp(att_env, "kernel") != 0 && strcmp(att_env, "gemm") != 0)
        vd_die("VERA_CUDA_ATTENTION='%s': expected gemm (the default) or kernel", att_env);
    g.attention_gemm = !(att_env && !strcmp(att_env, "kernel"));
    int ok = cuda_open_device(comm, why, sizeof(why));

    /* Collective from here: all ranks take the CUDA backend or none does (a rank without a GPU
     * must not leave the others waiting in the NCCL initialisation). flags[1]: some rank asked
     * for the MPI all-reduce (VERA_CUDA_ALLREDUCE=mpi). */
    const char *ar_env = getenv("VERA_CUDA_ALLREDUCE");
    int force_mpi = ar_env && !strcmp(ar_env, "mpi");
    int32_t flags[2] = {ok ? 0 : 1, force_mpi ? 1 : 0};
    if (comm) vd_comm_allreduce_max_i32(comm, flags, 2);
    if (flags[0]) {
        if (ok) snprintf(why, sizeof(why), "another rank has no usable CUDA device (every rank needs one)");
        cuda_release();
        if (err && errcap) snprintf(err, errcap, "%s", why);
        return NULL;
    }
    /* NCCL refuses two ranks on one GPU ("Duplicate GPU detected"). Compare the physical GPUs
     * (host and PCI address, the identity NCCL checks), not counts: with per-task GPU binding
     * every rank sees one device 0, yet each is a different GPU. */
    cudaDeviceProp prop;
    cudaCheck(cudaGetDeviceProperties(&prop, g.device));
    char host[256] = "?";
    if (gethostname(host, sizeof(host)) != 0) snprintf(host, sizeof(host), "?");
    host[sizeof(host) - 1] = 0;
    int shared_gpu = 0;
    if (comm && comm->world > 1) {
        char id[320];
        snprintf(id, sizeof(id), "%s/%04x:%02x:%02x", host, prop.pciDomainID, prop.pciBusID, prop.pciDeviceID);
        uint64_t *all = (uint64_t *)malloc(sizeof(uint64_t) * (size_t)comm->world);
        if (!all) vd_die("out of memory");
        vd_comm_allgather_u64(comm, vd_hash64(id, strlen(id), 0), all);
        for (int32_t i = 0; i < comm->world && !shared_gpu; i++)
            for (int32_t j = i + 1; j < comm->world; j++)
                if (all[i] == all[j]) {
                    shared_gpu = 1;
                    break;
                }
        free(all);
    }
    cublasCheck(cublasSetStream(g.cublas, g.stream));
    cublasCheck(cublasSetMathMode(g.cublas, CUBLAS_DEFAULT_MATH)); /* fp32: no TF32 */
    g.comm = comm;
    g.initialized = 1;
    cuda_fill_table(&g.table);

    int world = comm ? comm->world : 1, rank = comm ? comm->rank : 0;
    if (comm && !flags[1] && !shared_gpu) {
        /* one GPU per rank: NCCL, initialised from an id that rank 0 broadcasts over MPI */
        ncclUniqueId id;
        memset(&id, 0, sizeof(id));
        if (rank == 0) ncclCheck(ncclGetUniqueId(&id));
        vd_comm_bcast(comm, &id, sizeof(id), 0);
        ncclCheck(ncclCommInitRank(&g.nccl, world, id, rank));
        g.use_nccl = 1;
    }

    /* which GPU each rank uses: one line per rank, in rank order */
    for (int r = 0; r < world; r++) {
        if (r == rank) {
            printf("cuda: rank %d (node-local %d) on %s uses GPU %d of %d: %s, compute %d.%d, %.1f GiB, PCI "
                   "%04x:%02x:%02x\n",
                   rank, comm ? (int)comm->local_rank : 0, host, g.device, g.device_count, prop.name, prop.major,
                   prop.minor, (double)prop.totalGlobalMem / 1073741824.0, prop.pciDomainID, prop.pciBusID,
                   prop.pciDeviceID);
            fflush(stdout);
        }
        if (comm) vd_comm_barrier(comm);
    }
    int nccl_version = 0;
    if (g.use_nccl) ncclCheck(ncclGetVersion(&nccl_version));
    if (g.use_nccl)
        vd_log("cuda: gradient all-reduce with NCCL %d.%d.%d on the device buffer\n", nccl_version / 10000,
               (nccl_version / 100) % 100, nccl_version % 100);
    else if (comm && world > 1)
        vd_log("cuda: gradient all-reduce with MPI on a host copy (%s)\n",
               flags[1] ? "VERA_CUDA_ALLREDUCE=mpi"
                        : "ranks share a GPU, which NCCL refuses: give every rank its own GPU for NCCL");
    return &g.table;
}

extern "C" void vd_backend_cuda_shutdown(void) {
    if (!g.initialized) return;
    cudaCheck(cudaStreamSynchronize(g.stream));
    if (g.nccl) ncclCheck(ncclCommDestroy(g.nccl));
    g.nccl = NULL;
    cuda_release();
}
