/* vblora_row.h: the per-row pieces of VB-LoRA's top-k admixture (backend.h, vblora_topk and
 * vblora_compose_backward), as functions that compile for the host and the GPU, so the CPU
 * backend (src/backend/cpu.c) and the CUDA backend (src/backend/cuda/backend_cuda.cu) select the
 * same indices and differentiate through the softmax the same way. The loops over rows, and the
 * order of the bank-gradient sums, belong to each backend. */
#ifndef VERA_BACKEND_VBLORA_ROW_H
#define VERA_BACKEND_VBLORA_ROW_H

#include <math.h>
#include <stdint.h>

#ifdef __CUDACC__
#define VD_VB_HD static __host__ __device__ __forceinline__
#else
#define VD_VB_HD static inline
#endif

/* The k largest of logits (nv) into idx (k), descending; a tie keeps the lower index first (a
 * later equal value never displaces an earlier one). w (k) = softmax of the k values, with the
 * maximum subtracted first (torch.softmax's order). An insertion list: k is small (PEFT's
 * default 2), one pass over nv. */
VD_VB_HD void vd_vblora_topk_row(int32_t *idx, float *w, const float *logits, int nv, int k) {
    int have = 0;
    for (int c = 0; c < nv; c++) {
        float x = logits[c];
        if (have == k && !(x > w[k - 1])) continue; /* w holds the values until the softmax */
        int p = have < k ? have++ : k - 1;
        while (p > 0 && x > w[p - 1]) {
            w[p] = w[p - 1];
            idx[p] = idx[p - 1];
            p--;
        }
        w[p] = x;
        idx[p] = c;
    }
    float m = w[0], sum = 0.0f;
    for (int j = 0; j < k; j++) {
        w[j] = expf(w[j] - m);
        sum += w[j];
    }
    for (int j = 0; j < k; j++) w[j] /= sum;
}

/* g . bank[v] over the L values of one sub-vector's gradient g (stride gs) */
VD_VB_HD float vd_vblora_dot(const float *g, int gs, const float *bank, int L, int32_t v) {
    const float *bv = bank + (size_t)v * L;
    float s = 0.0f;
    for (int l = 0; l < L; l++) s += g[(size_t)l * gs] * bv[l];
    return s;
}

/* One sub-vector's logit gradient: with g the gradient of the composed sub-vector
 * sum_j w_j bank[idx_j], dw_j = g . bank[idx_j], and through the softmax
 * dlogit[idx_j] += w_j (dw_j - sum_m w_m dw_m). Only the k selected logits get a gradient
 * (topk passes none to the rest). dw_j is computed twice rather than kept, so no scratch of
 * size k is needed (k is a user option; a GPU thread has no such array). */
VD_VB_HD void vd_vblora_dlogits_row(float *dlogits, const float *g, int gs, const float *bank, int L,
                                    const int32_t *idx, const float *w, int k) {
    float dot = 0.0f;
    for (int j = 0; j < k; j++) dot += w[j] * vd_vblora_dot(g, gs, bank, L, idx[j]);
    for (int j = 0; j < k; j++) dlogits[idx[j]] += w[j] * (vd_vblora_dot(g, gs, bank, L, idx[j]) - dot);
}

#endif
