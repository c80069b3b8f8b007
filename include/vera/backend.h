/* backend.h: the seam between the model and the hardware. The model, adapter and optimizer
 * call only these operations on buffers the backend allocated ("device" pointers: host
 * memory for the CPU backend, GPU memory for a CUDA backend). A second backend fills the
 * same table; no #ifdef reaches the model code. All tensors are fp32, row-major, except the
 * operands of gemm_ex (frozen weights stored bf16 under --precision bf16). */
#ifndef VERA_BACKEND_H
#define VERA_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "vera/tensor.h"

/* A target that takes no loss (data.h defines the same): softmax_xent gives it loss 0 and a
 * zero gradient row. */
#ifndef VD_TARGET_NONE
#define VD_TARGET_NONE (-1)
#endif

/* Shape of one attention call (see attention_forward). */
typedef struct vd_attn_shape {
    int B, T;
    int n_head, n_kv_head, head_dim;  /* n_head % n_kv_head == 0 */
    int q_stride, kv_stride;          /* floats between consecutive token rows of q, and of k / v */
    /* (B*T) device positions, or NULL: query t of a sequence sees keys t - pos[t] .. t (packed
     * examples restart pos at 0, which ends attention at the example boundary); NULL = t.
     * t - pos[t] is clamped to [0, t]. pos NULL and pos[t] = t give bit-identical results. */
    const int32_t *pos;
} vd_attn_shape;

/* Shape of one VB-LoRA matrix (see vblora_compose): logits (n_outer, n_inner, nv), one
 * sub-vector of L entries per (outer, inner) pair, written with strides so, si, sl (floats).
 * PEFT's A (r x in): n_outer = r, n_inner = in / L, so = in, si = L, sl = 1.
 * PEFT's B (out x r): n_outer = out / L, n_inner = r, so = L * r, si = 1, sl = r. */
typedef struct vd_vblora_shape {
    int n_outer, n_inner;
    int L;       /* vector_length */
    int nv;      /* num_vectors (bank rows) */
    int k;       /* topk, 1 <= k <= nv */
    int so, si, sl;
} vd_vblora_shape;

typedef struct vd_backend {
    const char *name;
    /* ---- memory ---- */
    void *(*alloc)(size_t bytes);                              /* zero-filled; dies on failure */
    void (*free)(void *p);
    void (*to_device)(void *dst, const void *src, size_t bytes);
    void (*to_host)(void *dst, const void *src, size_t bytes);
    void (*zero)(void *p, size_t bytes);
    void (*copy)(void *dst, const void *src, size_t bytes);    /* device to device */
    /* Free device memory this rank may use, in bytes; NULL for a backend whose "device" memory
     * is host memory (then /proc/meminfo and the cgroup limit decide: src/train/memory.c). */
    size_t (*device_free_bytes)(void);

    /* ---- dense ---- */
    /* C (M x N) = alpha * op(A) op(B) + beta * C; op(A) is M x K, op(B) is K x N. */
    void (*gemm)(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                 const float *B, int ldb, float beta, float *C, int ldc);
    /* gemm with typed operands: A of type ta, B of type tb (VD_DTYPE_F32 or VD_DTYPE_BF16; lda,
     * ldb in elements), C fp32, every product accumulated in fp32. When either operand is BF16
     * the other one enters as its bf16 rounding too (the GEMM runs on bf16 inputs, as cuBLAS's
     * GemmEx does), so backends agree up to the order of the fp32 sums. Both F32 is `gemm`
     * exactly (TF32 inputs when set_tf32 turned it on). */
    void (*gemm_ex)(int trans_a, int trans_b, int M, int N, int K, float alpha, const void *A, vd_dtype ta,
                    int lda, const void *B, vd_dtype tb, int ldb, float beta, float *C, int ldc);
    /* dst (n bf16, device) = round-to-nearest-even of src (n fp32, device). */
    void (*to_bf16)(void *dst, const float *src, size_t n);
    /* --precision tf32: fp32 GEMMs may round their inputs to TF32 (cuBLAS's FAST_TF32 compute).
     * NULL on a backend without TF32 (the CPU: the CLI refuses the option there). */
    void (*set_tf32)(int on);
    void (*add_bias)(float *out, const float *bias, int N, int OC);           /* out[n,:] += bias */

    /* ---- transformer ---- */
    /* out[b,t,:] = wte[tokens[b,t],:] (+ wpe[p,:] when wpe is not NULL: GPT-2's learned positions),
     * p = pos[b*T+t] (device, B*T) or t when pos is NULL. */
    void (*encoder_forward)(float *out, const int32_t *tokens, const float *wte, const float *wpe,
                            const int32_t *pos, int B, int T, int C);
    void (*layernorm_forward)(float *out, float *mean, float *rstd, const float *inp, const float *w,
                              const float *b, int N, int C, float eps);
    /* dinp += d(LN)/d(inp)^T dout; no weight gradients (frozen). */
    void (*layernorm_backward)(float *dinp, const float *dout, const float *inp, const float *w,
                               const float *mean, const float *rstd, int N, int C);
    /* RMSNorm (HF LlamaRMSNorm, fp32): rstd[n] = 1/sqrt(mean_c inp[n,c]^2 + eps),
     * out[n,c] = inp[n,c] * rstd[n] * w[c]. */
    void (*rmsnorm_forward)(float *out, float *rstd, const float *inp, const float *w, int N, int C, float eps);
    /* dinp += d(RMSNorm)/d(inp)^T dout; no weight gradient (frozen). */
    void (*rmsnorm_backward)(float *dinp, const float *dout, const float *inp, const float *w,
                             const float *rstd, int N, int C);
    /* Rotary embedding in place, HF's rotate_half pairing: for each row n (position t = pos[n], or
     * n % T when pos (device, B*T) is NULL),
     * each of n_heads heads (head h at x[n*row_stride + h*head_dim]) and i < head_dim/2, with
     * a = t * inv_freq[i] (fp32 product): (x1, x2) = (x[i], x[i + head_dim/2]) becomes
     * (x1 cos a - x2 sin a, x2 cos a + x1 sin a). inverse = 1 rotates by -a (the backward).
     * inv_freq (head_dim/2) is device memory. */
    void (*rope)(float *x, const float *inv_freq, const int32_t *pos, int B, int T, int n_heads, int head_dim,
                 int row_stride, int inverse);
    /* Causal scaled-dot-product attention with grouped-query heads (shape in vd_attn_shape):
     * q (B,T,.) rows of s->q_stride floats, head h at column h*head_dim; k, v rows of
     * s->kv_stride floats, kv head h / (n_head / n_kv_head). out (B,T,n_head*head_dim)
     * contiguous. Each query t sees keys t - pos[t] .. t. Scale 1/sqrt(head_dim).
     * att is the backend's saved state for attention_backward, attention_saved_floats(s)
     * floats, private to the backend: the CPU keeps per-row softmax statistics and recomputes
     * the probabilities, the CUDA backend keeps the softmax (B,n_head,T,T).
     * GPT-2 passes its fused qkv (q = qkv, k = qkv + C, v = qkv + 2C, strides 3C). */
    void (*attention_forward)(float *out, float *att, const float *q, const float *k, const float *v,
                              const struct vd_attn_shape *s);
    /* Floats attention_forward writes into att for attention_backward (depends on s->B, s->T,
     * s->n_head only). */
    size_t (*attention_saved_floats)(const struct vd_attn_shape *s);
    /* dq, dk, dv (same strides as q, k, v; written, not accumulated; dk/dv summed over the
     * heads of a group) from dout (B,T,n_head*head_dim) and the forward's att (with the same
     * q, k, v); datt is scratch of B*n_head*T*T floats. */
    void (*attention_backward)(float *dq, float *dk, float *dv, float *datt, const float *dout, const float *q,
                               const float *k, const float *v, const float *att, const struct vd_attn_shape *s);
    /* Generation against a KV cache (one sequence; s->B and s->T are not used): query i (row i of
     * q, rows of s->q_stride floats) is at position pos0 + i and attends to cache rows
     * 0 .. pos0 + i of kcache / vcache (rows of s->kv_stride floats, head layout and GQA as
     * attention_forward; the caller has written the n_new new keys / values at rows pos0..).
     * out (n_new, n_head*head_dim) contiguous. Scale 1/sqrt(head_dim). No softmax is kept. */
    void (*attention_cached)(float *out, const float *q, const float *kcache, const float *vcache, int n_new,
                             int pos0, const struct vd_attn_shape *s);
    void (*gelu_forward)(float *out, const float *inp, size_t n);             /* GELU, tanh form */
    void (*gelu_backward)(float *dinp, const float *inp, const float *dout, size_t n); /* dinp = */
    void (*swiglu_forward)(float *out, const float *gate, const float *up, size_t n); /* out = silu(gate) * up */
    /* dgate = dout * up * silu'(gate), dup = dout * silu(gate) (written, not accumulated) */
    void (*swiglu_backward)(float *dgate, float *dup, const float *gate, const float *up, const float *dout,
                            size_t n);
    void (*add)(float *out, const float *a, const float *b, size_t n);        /* out = a + b */
    void (*accumulate)(float *a, const float *b, size_t n);                   /* a += b */
    /* losses[n] = -log softmax(logits[n])[targets[n]], 0 where targets[n] == VD_TARGET_NONE;
     * probs keeps the softmax (N, V) of every row. */
    void (*softmax_xent_forward)(float *losses, float *probs, const float *logits,
                                 const int32_t *targets, int N, int V);
    /* dlogits = (probs - onehot(target)) * dloss, a row of 0 where the target is VD_TARGET_NONE;
     * written over probs is allowed. */
    void (*softmax_xent_backward)(float *dlogits, const float *probs, const int32_t *targets,
                                  float dloss, int N, int V);
    double (*sum)(const float *x, size_t n);                                  /* result on host */

    /* ---- adapter vectors ---- */
    void (*scale_cols)(float *out, const float *inp, const float *vec, int N, int C); /* out[n,c] = inp[n,c]*vec[c] */
    void (*scale_cols_add)(float *out, const float *inp, const float *vec, int N, int C); /* out += */
    void (*scale_rows)(float *out, const float *inp, const float *vec, int N, int C); /* out[n,c] = inp[n,c]*vec[n] */
    /* From M = G^T U (out x r): db[i] += sum_k B[i,k] d[k] M[i,k]; dd[k] += sum_i b[i] B[i,k] M[i,k]. */
    void (*vera_vector_grads)(float *db, float *dd, const float *M, const float *Bs, const float *b,
                              const float *d, int out, int r);
    /* Inverted dropout with a counter-based mask: element (row, c) is kept iff
     * mix(seed, row0 + row, c) >= p; kept values are scaled by 1/(1-p). out may equal inp. */
    void (*dropout)(float *out, const float *inp, int N, int C, float p, uint64_t seed, uint64_t row0);

    /* ---- VB-LoRA: matrices composed from a shared vector bank (docs/adapters.md) ---- */
    /* For each of n rows of nv logits: idx (n, k) = the k largest logits in descending order
     * (ties: the lower index first; torch.topk leaves the order of ties unspecified) and
     * w (n, k) = their softmax (max subtracted, as torch.softmax). */
    void (*vblora_topk)(int32_t *idx, float *w, const float *logits, int n, int nv, int k);
    /* Sub-vector s = o * n_inner + i (o < n_outer, i < n_inner) is written at
     * out[o*so + i*si + l*sl] = sum_j w[s,j] bank[idx[s,j], l], l < L, j ascending. */
    void (*vblora_compose)(float *out, const float *bank, const int32_t *idx, const float *w,
                           const struct vd_vblora_shape *s);
    /* The backward of compose for g(s, l) = dmat[o*so + i*si + l*sl] (accumulated, +=):
     * dlogits (n_outer*n_inner, nv): only the top-k entries of each row, through the softmax;
     * dbank (nv, L): sum over s ascending, j ascending of w[s,j] g(s, :) (a fixed order:
     * bit-identical for any thread count; callers fix the order of layers). */
    void (*vblora_compose_backward)(float *dlogits, float *dbank, const float *dmat, const float *bank,
                                    const int32_t *idx, const float *w, const struct vd_vblora_shape *s);

    /* ---- optimizer ---- */
    double (*sum_sq)(const float *x, size_t n);                               /* result on host */
    /* AdamW (PyTorch semantics) on n values; grads are multiplied by grad_scale first. */
    void (*adamw)(float *params, const float *grads, float *m, float *v, size_t n, float lr,
                  float beta1, float beta2, float eps, float weight_decay, int32_t t, float grad_scale);

    /* ---- collectives on backend memory ---- */
    /* In-place sum of count floats over all ranks (count in elements, same on every rank).
     * CPU: MPI_Allreduce on the host buffer; a GPU backend: NCCL on the device buffer. */
    void (*allreduce_sum)(float *buf, size_t count);
} vd_backend;

struct vd_comm;
/* The CPU backend; comm (may be NULL for single-process tools) carries its all-reduce. */
const vd_backend *vd_backend_cpu_init(const struct vd_comm *comm);
/* The CPU backend without a communicator (single process: allreduce_sum is the identity). */
const vd_backend *vd_backend_cpu(void);
/* be->attention_saved_floats(s), or the CPU backend's when be is NULL (memory estimates made
 * without a backend: inspect, the trainer's pre-check). */
size_t vd_attention_saved_floats(const vd_backend *be, const vd_attn_shape *s);
/* The dropout stream every backend must reproduce: uniform in [0,1) for element (row, col). */
float vd_dropout_uniform(uint64_t seed, uint64_t row, uint64_t col);
/* The CPU backend runs attention through BLAS GEMMs for seq_len >= this (default 128), with
 * direct loops below it; tests lower it to compare the two paths. */
extern int vd_cpu_attention_gemm_min_t;
/* src/backend/cpu_bf16.c: the CPU's gemm_ex. VD_CPU_BF16_CONVERT (default) widens bf16 operands
 * to fp32 and calls cblas_sgemm; VD_CPU_BF16_SBGEMM calls OpenBLAS's cblas_sbgemm when the
 * loaded library has it (vd_cpu_has_sbgemm), the convert path otherwise. The benchmark
 * (bench/bench_bf16_gemm.c) switches between them. */
enum { VD_CPU_BF16_CONVERT = 0, VD_CPU_BF16_SBGEMM = 1 };
extern int vd_cpu_bf16_gemm_impl;
int vd_cpu_has_sbgemm(void);
void vd_cpu_gemm_ex(int trans_a, int trans_b, int M, int N, int K, float alpha, const void *A, vd_dtype ta, int lda,
                    const void *B, vd_dtype tb, int ldb, float beta, float *C, int ldc);
void vd_cpu_to_bf16(void *dst, const float *src, size_t n);
/* host conversions of n values (OpenMP): bf16 -> fp32 exact, fp32 -> bf16 nearest even */
void vd_cpu_bf16_widen(float *dst, const uint16_t *src, size_t n);
void vd_cpu_bf16_narrow(uint16_t *dst, const float *src, size_t n);
/* src/backend/blas_kernel.c: the OpenBLAS kernel in use (openblas_get_corename), and the check
 * main() runs first: when OpenBLAS picked a kernel weaker than the CPU's features allow (its
 * generic Prescott kernels on a CPU it does not know), execute argv again with OPENBLAS_CORETYPE
 * set from the features (SkylakeX, Haswell), once; a user's OPENBLAS_CORETYPE is kept (the
 * summary says so when it is weaker), VERA_BLAS_FIX=0 turns the restart off. Returns only when no
 * restart is needed or possible. */
const char *vd_blas_kernel_name(void);
/* "" or why the kernel is what it is (" (OpenBLAS picked Prescott ...: restarted ...)"), for the summary. */
const char *vd_blas_kernel_note(void);
void vd_blas_ensure_kernel(char **argv);
/* Threads this rank uses for OpenMP and OpenBLAS (its share of the node's cores). */
void vd_backend_cpu_set_threads(int32_t n);

#endif
