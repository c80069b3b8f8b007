/* cpu_bf16.c: the CPU backend's typed GEMM (gemm_ex) and its bf16 conversions.
 *
 * How the bf16 GEMMs compute was chosen by measurement (bench/bench_bf16_gemm.c,
 * docs/benchmarks.md "bf16 GEMM on the CPU"): OpenBLAS's cblas_sbgemm is absent from Debian 12's
 * 0.3.21 (the header declares it, the library is built without BUILD_BFLOAT16), so the default
 * widens each bf16 operand to fp32 (exact) in a scratch buffer, rounds an fp32 operand facing a
 * bf16 one to its bf16 value, and calls cblas_sgemm: the products are those of the bf16 inputs,
 * summed in fp32, as cuBLAS's GemmEx with CUBLAS_COMPUTE_32F. When the loaded OpenBLAS exports
 * cblas_sbgemm, vd_cpu_bf16_gemm_impl = VD_CPU_BF16_SBGEMM uses it instead (the benchmark's
 * second column; the default stays until a measurement on such a build says otherwise). */
#define _GNU_SOURCE
#include "vera/backend.h"

#include <cblas.h>
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

#include "vera/common.h"

int vd_cpu_bf16_gemm_impl = VD_CPU_BF16_CONVERT;

void vd_cpu_bf16_widen(float *dst, const uint16_t *src, size_t n) {
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) dst[i] = vd_bf16_to_f32(src[i]);
}

void vd_cpu_bf16_narrow(uint16_t *dst, const float *src, size_t n) {
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) dst[i] = vd_bf16_from_f32(src[i]);
}

/* Two growable scratch buffers, one per operand (backend calls come from one thread). */
static void *g_scratch[2];
static size_t g_scratch_bytes[2];

static void *cpu_scratch(int slot, size_t bytes) {
    if (bytes > g_scratch_bytes[slot]) {
        free(g_scratch[slot]);
        g_scratch[slot] = NULL;
        if (posix_memalign(&g_scratch[slot], 64, bytes) != 0) vd_die("out of memory allocating %zu bytes of GEMM scratch", bytes);
        g_scratch_bytes[slot] = bytes;
    }
    return g_scratch[slot];
}

/* A stored operand (rows x cols, leading dimension ld, type t) as compact fp32 holding bf16
 * values: BF16 widened (exact), F32 rounded to nearest even. */
static const float *cpu_operand_f32(int slot, const void *X, vd_dtype t, int rows, int cols, int ld) {
    float *dst = cpu_scratch(slot, sizeof(float) * (size_t)rows * cols);
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < rows; i++) {
        float *d = dst + (size_t)i * cols;
        if (t == VD_DTYPE_BF16) {
            const uint16_t *s = (const uint16_t *)X + (size_t)i * ld;
            for (int j = 0; j < cols; j++) d[j] = vd_bf16_to_f32(s[j]);
        } else {
            const float *s = (const float *)X + (size_t)i * ld;
            for (int j = 0; j < cols; j++) d[j] = vd_bf16_round(s[j]);
        }
    }
    return dst;
}

/* The same as compact bf16 (for cblas_sbgemm). */
static const uint16_t *cpu_operand_bf16(int slot, const void *X, vd_dtype t, int rows, int cols, int ld) {
    uint16_t *dst = cpu_scratch(slot, sizeof(uint16_t) * (size_t)rows * cols);
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < rows; i++) {
        uint16_t *d = dst + (size_t)i * cols;
        if (t == VD_DTYPE_BF16) memcpy(d, (const uint16_t *)X + (size_t)i * ld, sizeof(uint16_t) * (size_t)cols);
        else {
            const float *s = (const float *)X + (size_t)i * ld;
            for (int j = 0; j < cols; j++) d[j] = vd_bf16_from_f32(s[j]);
        }
    }
    return dst;
}

typedef void (*sbgemm_fn)(enum CBLAS_ORDER, enum CBLAS_TRANSPOSE, enum CBLAS_TRANSPOSE, blasint, blasint, blasint,
                          float, const uint16_t *, blasint, const uint16_t *, blasint, float, float *, blasint);

/* cblas_sbgemm of the OpenBLAS this process loaded, or NULL (Debian's 0.3.21 has none). */
static sbgemm_fn cpu_sbgemm(void) {
    static int probed = 0;
    static sbgemm_fn fn = NULL;
    if (!probed) {
        probed = 1;
        void *sym = dlsym(RTLD_DEFAULT, "cblas_sbgemm");
        memcpy(&fn, &sym, sizeof(fn)); /* object to function pointer, without the cast ISO C forbids */
    }
    return fn;
}

int vd_cpu_has_sbgemm(void) { return cpu_sbgemm() != NULL; }

void vd_cpu_gemm_ex(int trans_a, int trans_b, int M, int N, int K, float alpha, const void *A, vd_dtype ta, int lda,
                    const void *B, vd_dtype tb, int ldb, float beta, float *C, int ldc) {
    if ((ta != VD_DTYPE_F32 && ta != VD_DTYPE_BF16) || (tb != VD_DTYPE_F32 && tb != VD_DTYPE_BF16))
        vd_die("internal: gemm_ex on %s x %s operands (expected F32 or BF16)", vd_dtype_name(ta), vd_dtype_name(tb));
    CBLAS_TRANSPOSE opa = trans_a ? CblasTrans : CblasNoTrans, opb = trans_b ? CblasTrans : CblasNoTrans;
    if (ta == VD_DTYPE_F32 && tb == VD_DTYPE_F32) {
        cblas_sgemm(CblasRowMajor, opa, opb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    /* stored shapes: A is M x K (K x M transposed), B is K x N (N x K transposed) */
    int ar = trans_a ? K : M, ac = trans_a ? M : K, br = trans_b ? N : K, bc = trans_b ? K : N;
    sbgemm_fn sb = vd_cpu_bf16_gemm_impl == VD_CPU_BF16_SBGEMM ? cpu_sbgemm() : NULL;
    if (sb) {
        const uint16_t *a = cpu_operand_bf16(0, A, ta, ar, ac, lda), *b = cpu_operand_bf16(1, B, tb, br, bc, ldb);
        sb(CblasRowMajor, opa, opb, M, N, K, alpha, a, ac, b, bc, beta, C, ldc);
        return;
    }
    const float *a = cpu_operand_f32(0, A, ta, ar, ac, lda), *b = cpu_operand_f32(1, B, tb, br, bc, ldb);
    cblas_sgemm(CblasRowMajor, opa, opb, M, N, K, alpha, a, ac, b, bc, beta, C, ldc);
}

void vd_cpu_to_bf16(void *dst, const float *src, size_t n) { vd_cpu_bf16_narrow(dst, src, n); }
