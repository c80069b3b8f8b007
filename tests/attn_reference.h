/* attn_reference.h: the CPU backend's attention as it was before it kept only per-row softmax
 * statistics (commit c8ec7af): both paths materialise the probabilities P (B, NH, T, T) in the
 * forward and read them back in the backward. The same float operations in the same order as
 * those kernels (scores, vd_vexpf, the sums, the same BLAS calls with the same shapes), so
 * the backend must reproduce out, dq, dk, dv bit for bit. Single-threaded; the GEMMs through
 * be->gemm (the backend's own cblas_sgemm). */
#ifndef VERA_TEST_ATTN_REFERENCE_H
#define VERA_TEST_ATTN_REFERENCE_H

#include <math.h>
#include <stdlib.h>

#include "../src/backend/cpu_vmath.h"
#include "vera/backend.h"

#define REF_BLOCK 64 /* the GEMM path's query / key block */

static int ref_lo(const vd_attn_shape *s, int b, int t) {
    if (!s->pos) return 0;
    int lo = t - s->pos[(size_t)b * s->T + t];
    return lo < 0 ? 0 : lo > t ? t : lo;
}
/* offsets of q row t of head h, of k / v row t of the kv head query head h reads, of out row t */
static size_t ref_q(const vd_attn_shape *s, int b, int t, int h) {
    return ((size_t)b * s->T + t) * s->q_stride + (size_t)h * s->head_dim;
}
static size_t ref_kv(const vd_attn_shape *s, int b, int t, int h) {
    return ((size_t)b * s->T + t) * s->kv_stride + (size_t)(h / (s->n_head / s->n_kv_head)) * s->head_dim;
}
static size_t ref_o(const vd_attn_shape *s, int b, int t, int h) {
    return ((size_t)b * s->T + t) * s->n_head * s->head_dim + (size_t)h * s->head_dim;
}

/* row t of P: softmax of a[lo..t] (max, exp, sum in order, times 1/sum), 0 elsewhere */
static void ref_softmax_row(float *a, int lo, int t, int T) {
    float maxv = -INFINITY, sum = 0.0f;
    for (int t2 = lo; t2 <= t; t2++) if (a[t2] > maxv) maxv = a[t2];
    for (int t2 = lo; t2 <= t; t2++) a[t2] = vd_vexpf(a[t2] - maxv);
    for (int t2 = lo; t2 <= t; t2++) sum += a[t2];
    float inv = 1.0f / sum;
    for (int t2 = lo; t2 <= t; t2++) a[t2] *= inv;
    for (int t2 = 0; t2 < lo; t2++) a[t2] = 0.0f;
    for (int t2 = t + 1; t2 < T; t2++) a[t2] = 0.0f;
}

/* out and P (att, B*NH*T*T) as the direct loops (gemm 0) or the blocked GEMMs (gemm 1) made them */
static void ref_attention_forward(const vd_backend *be, int gemm, float *out, float *att, const float *q,
                                  const float *k, const float *v, const vd_attn_shape *s) {
    int T = s->T, NH = s->n_head, hs = s->head_dim;
    float scale = 1.0f / sqrtf((float)hs);
    for (int b = 0; b < s->B; b++)
        for (int h = 0; h < NH; h++) {
            float *P = att + ((size_t)b * NH + h) * T * T;
            if (gemm) {
                for (int i0 = 0; i0 < T; i0 += REF_BLOCK) {
                    int i1 = i0 + REF_BLOCK < T ? i0 + REF_BLOCK : T;
                    float *S = P + (size_t)i0 * T;
                    be->gemm(0, 1, i1 - i0, i1, hs, scale, q + ref_q(s, b, i0, h), s->q_stride, k + ref_kv(s, b, 0, h),
                             s->kv_stride, 0.0f, S, T);
                    for (int t = i0; t < i1; t++) ref_softmax_row(S + (size_t)(t - i0) * T, ref_lo(s, b, t), t, T);
                    be->gemm(0, 0, i1 - i0, hs, i1, 1.0f, S, T, v + ref_kv(s, b, 0, h), s->kv_stride, 0.0f,
                             out + ref_o(s, b, i0, h), NH * hs);
                }
                continue;
            }
            for (int t = 0; t < T; t++) {
                float *a = P + (size_t)t * T, *o = out + ref_o(s, b, t, h);
                const float *qt = q + ref_q(s, b, t, h);
                int lo = ref_lo(s, b, t);
                for (int t2 = lo; t2 <= t; t2++) {
                    const float *kt = k + ref_kv(s, b, t2, h);
                    float sc = 0.0f;
                    for (int i = 0; i < hs; i++) sc += qt[i] * kt[i];
                    a[t2] = sc * scale;
                }
                ref_softmax_row(a, lo, t, T);
                for (int i = 0; i < hs; i++) o[i] = 0.0f;
                for (int t2 = lo; t2 <= t; t2++)
                    for (int i = 0; i < hs; i++) o[i] += a[t2] * v[ref_kv(s, b, t2, h) + i];
            }
        }
}

/* dq, dk, dv from dout and the reference forward's att; datt scratch of att's size */
static void ref_attention_backward(const vd_backend *be, int gemm, float *dq, float *dk, float *dv, float *datt,
                                   const float *dout, const float *q, const float *k, const float *v,
                                   const float *att, const vd_attn_shape *s) {
    int T = s->T, NH = s->n_head, hs = s->head_dim, group = NH / s->n_kv_head, OC = NH * hs;
    float scale = 1.0f / sqrtf((float)hs);
    for (int b = 0; b < s->B; b++)
        for (int kvh = 0; kvh < s->n_kv_head; kvh++) {
            int h0 = kvh * group; /* the group's first head: ref_kv(.., h0) is this kv head */
            float *dkh = dk + ref_kv(s, b, 0, h0), *dvh = dv + ref_kv(s, b, 0, h0);
            if (!gemm)
                for (int t = 0; t < T; t++) {
                    for (int i = 0; i < hs; i++) dkh[(size_t)t * s->kv_stride + i] = 0.0f;
                    for (int i = 0; i < hs; i++) dvh[(size_t)t * s->kv_stride + i] = 0.0f;
                    for (int h = h0; h < h0 + group; h++)
                        for (int i = 0; i < hs; i++) dq[ref_q(s, b, t, h) + i] = 0.0f;
                }
            for (int h = h0; h < h0 + group; h++) {
                const float *P = att + ((size_t)b * NH + h) * T * T;
                float *dP = datt + ((size_t)b * NH + h) * T * T;
                if (!gemm) {
                    for (int t = 0; t < T; t++) {
                        const float *a = P + (size_t)t * T, *go = dout + ref_o(s, b, t, h), *qt = q + ref_q(s, b, t, h);
                        float *da = dP + (size_t)t * T, *dqt = dq + ref_q(s, b, t, h);
                        int lo = ref_lo(s, b, t);
                        float dot = 0.0f;
                        for (int t2 = lo; t2 <= t; t2++) {
                            const float *vt = v + ref_kv(s, b, t2, h);
                            float *dvt = dvh + (size_t)t2 * s->kv_stride, sc = 0.0f;
                            for (int i = 0; i < hs; i++) { sc += go[i] * vt[i]; dvt[i] += a[t2] * go[i]; }
                            da[t2] = sc;
                            dot += a[t2] * sc;
                        }
                        for (int t2 = lo; t2 <= t; t2++) {
                            float dpre = a[t2] * (da[t2] - dot) * scale;
                            const float *kt = k + ref_kv(s, b, t2, h);
                            float *dkt = dkh + (size_t)t2 * s->kv_stride;
                            for (int i = 0; i < hs; i++) { dqt[i] += dpre * kt[i]; dkt[i] += dpre * qt[i]; }
                        }
                    }
                    continue;
                }
                float beta_kv = h == h0 ? 0.0f : 1.0f;
                for (int i0 = 0; i0 < T; i0 += REF_BLOCK) {
                    int i1 = i0 + REF_BLOCK < T ? i0 + REF_BLOCK : T;
                    be->gemm(0, 1, i1 - i0, i1, hs, 1.0f, dout + ref_o(s, b, i0, h), OC, v + ref_kv(s, b, 0, h),
                             s->kv_stride, 0.0f, dP + (size_t)i0 * T, T);
                    for (int t = i0; t < i1; t++) {
                        const float *p = P + (size_t)t * T;
                        float *d = dP + (size_t)t * T, dot = 0.0f;
                        int lo = ref_lo(s, b, t);
                        for (int t2 = lo; t2 <= t; t2++) dot += p[t2] * d[t2];
                        for (int t2 = lo; t2 <= t; t2++) d[t2] = p[t2] * (d[t2] - dot) * scale;
                        for (int t2 = 0; t2 < lo; t2++) d[t2] = 0.0f;
                        for (int t2 = t + 1; t2 < T; t2++) d[t2] = 0.0f;
                    }
                    be->gemm(0, 0, i1 - i0, hs, i1, 1.0f, dP + (size_t)i0 * T, T, k + ref_kv(s, b, 0, h), s->kv_stride,
                             0.0f, dq + ref_q(s, b, i0, h), s->q_stride);
                }
                for (int j0 = 0; j0 < T; j0 += REF_BLOCK) {
                    int j1 = j0 + REF_BLOCK < T ? j0 + REF_BLOCK : T;
                    size_t corner = (size_t)j0 * T + (size_t)j0;
                    be->gemm(1, 0, j1 - j0, hs, T - j0, 1.0f, P + corner, T, dout + ref_o(s, b, j0, h), OC, beta_kv,
                             dvh + (size_t)j0 * s->kv_stride, s->kv_stride);
                    be->gemm(1, 0, j1 - j0, hs, T - j0, 1.0f, dP + corner, T, q + ref_q(s, b, j0, h), s->q_stride,
                             beta_kv, dkh + (size_t)j0 * s->kv_stride, s->kv_stride);
                }
            }
        }
}

#endif
