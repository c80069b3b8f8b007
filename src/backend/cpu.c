/* backend_cpu.c: the CPU backend. GEMMs through CBLAS (OpenBLAS), everything else as short
 * OpenMP loops. "Device" memory is host memory. */
#define _POSIX_C_SOURCE 200809L
#include "vera/backend.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "vera/comm.h"
#include "vera/common.h"
#include "vera/prng.h"
#include "vblora_row.h"

#include "cpu_vmath.h"

/* OpenBLAS exports this; declared here so we do not depend on which cblas.h is first on the path. */
void openblas_set_num_threads(int num_threads);

void vd_backend_cpu_set_threads(int32_t n) {
    if (n < 1) n = 1;
    omp_set_num_threads(n);
    openblas_set_num_threads(n);
}

/* ---- memory ---- */
static void *cpu_alloc(size_t bytes) {
    /* 64-byte alignment for vector loads; calloc-equivalent semantics */
    size_t rounded = (bytes + 63) / 64 * 64;
    void *p = NULL;
    if (posix_memalign(&p, 64, rounded ? rounded : 64) != 0) vd_die("out of memory allocating %zu bytes", bytes);
    memset(p, 0, rounded);
    return p;
}
static void cpu_free(void *p) { free(p); }
static void cpu_memcpy(void *dst, const void *src, size_t bytes) { if (bytes) memmove(dst, src, bytes); }
static void cpu_zero(void *p, size_t bytes) { if (bytes) memset(p, 0, bytes); }

/* ---- dense ---- */
/* the fp32 GEMM is gemm_ex on two F32 operands (cpu_bf16.c: cblas_sgemm) */
static void cpu_gemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                     const float *B, int ldb, float beta, float *C, int ldc) {
    vd_cpu_gemm_ex(trans_a, trans_b, M, N, K, alpha, A, VD_DTYPE_F32, lda, B, VD_DTYPE_F32, ldb, beta, C, ldc);
}

static void cpu_add_bias(float *out, const float *bias, int N, int OC) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        float *o = out + (size_t)n * OC;
        for (int c = 0; c < OC; c++) o[c] += bias[c];
    }
}

/* ---- transformer ---- */
static void cpu_encoder_forward(float *out, const int32_t *tokens, const float *wte, const float *wpe,
                                const int32_t *pos, int B, int T, int C) {
    #pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) {
            float *o = out + ((size_t)b * T + t) * C;
            const float *te = wte + (size_t)tokens[b * T + t] * C;
            if (!wpe) { /* no learned positions (Llama: RoPE inside attention) */
                memcpy(o, te, sizeof(float) * (size_t)C);
                continue;
            }
            const float *pe = wpe + (size_t)(pos ? pos[b * T + t] : t) * C;
            for (int c = 0; c < C; c++) o[c] = te[c] + pe[c];
        }
    }
}

static void cpu_layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w,
                                  const float *b, int N, int C, float eps) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        double m = 0.0;
        for (int c = 0; c < C; c++) m += x[c];
        m /= C;
        double v = 0.0;
        for (int c = 0; c < C; c++) { double d = x[c] - m; v += d * d; }
        v /= C;
        float s = (float)(1.0 / sqrt(v + eps));
        float *o = out + (size_t)n * C;
        for (int c = 0; c < C; c++) o[c] = ((float)(x[c] - m)) * s * w[c] + b[c];
        mean[n] = (float)m;
        rstd[n] = s;
    }
}

static void cpu_layernorm_backward(float *dinp, const float *dout, const float *inp, const float *w,
                                   const float *mean, const float *rstd, int N, int C) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        const float *g = dout + (size_t)n * C;
        float *dx = dinp + (size_t)n * C;
        float m = mean[n], s = rstd[n];
        /* two reductions: mean of dnorm and mean of dnorm * norm */
        double a = 0.0, bsum = 0.0;
        for (int c = 0; c < C; c++) {
            float norm = (x[c] - m) * s;
            float dnorm = w[c] * g[c];
            a += dnorm;
            bsum += dnorm * norm;
        }
        float ma = (float)(a / C), mb = (float)(bsum / C);
        for (int c = 0; c < C; c++) {
            float norm = (x[c] - m) * s;
            float dnorm = w[c] * g[c];
            dx[c] += s * (dnorm - ma - norm * mb);
        }
    }
}

/* RMSNorm as HF's LlamaRMSNorm in fp32: variance = mean(x^2), rstd = 1/sqrt(var + eps),
 * out = (x * rstd) * w. inp, out (N,C); w (C); rstd (N) kept for backward. The sum of squares
 * runs in double (torch's float reduction is blocked, close to exact; a naive float sum drifts
 * at C in the thousands); var itself and everything after it are float, as in HF. */
static void cpu_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *w, int N, int C,
                                float eps) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        double ss = 0.0;
        for (int c = 0; c < C; c++) ss += x[c] * x[c]; /* float squares, as x.pow(2) */
        float var = (float)(ss / C);
        float s = 1.0f / sqrtf(var + eps);
        float *o = out + (size_t)n * C;
        for (int c = 0; c < C; c++) o[c] = (x[c] * s) * w[c];
        rstd[n] = s;
    }
}

/* y = x s w with s = (mean x^2 + eps)^-1/2: dx = s (w g - x s^2 mean(w g x)). dinp += . */
static void cpu_rmsnorm_backward(float *dinp, const float *dout, const float *inp, const float *w,
                                 const float *rstd, int N, int C) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        const float *g = dout + (size_t)n * C;
        float *dx = dinp + (size_t)n * C;
        float s = rstd[n];
        double acc = 0.0;
        for (int c = 0; c < C; c++) acc += w[c] * g[c] * x[c];
        float k = s * s * (float)(acc / C);
        for (int c = 0; c < C; c++) dx[c] += s * (w[c] * g[c] - x[c] * k);
    }
}

/* Rotary embedding in place, HF rotate_half pairing (x[i] with x[i + head_dim/2]). x rows of
 * row_stride floats, (B*T) rows, n_heads heads of head_dim at the row's start; inv_freq
 * (head_dim/2). The angle is the fp32 product t * inv_freq[i], as HF computes it. inverse
 * rotates by -angle: the transpose of the rotation, i.e. the backward. */
static void cpu_rope(float *x, const float *inv_freq, const int32_t *pos, int B, int T, int n_heads, int head_dim,
                     int row_stride, int inverse) {
    int half = head_dim / 2;
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < B * T; n++) {
        float *row = x + (size_t)n * row_stride;
        float t = (float)(pos ? pos[n] : n % T);
        for (int i = 0; i < half; i++) {
            float a = t * inv_freq[i];
            float c = cosf(a), s = inverse ? -sinf(a) : sinf(a);
            for (int h = 0; h < n_heads; h++) {
                float *xh = row + (size_t)h * head_dim;
                float x1 = xh[i], x2 = xh[i + half];
                xh[i] = x1 * c - x2 * s;
                xh[i + half] = x2 * c + x1 * s;
            }
        }
    }
}

/* SwiGLU's elementwise part: out = silu(gate) * up, silu(x) = x / (1 + exp(-x)). (n) each. */
static void cpu_swiglu_forward(float *out, const float *gate, const float *up, size_t n) {
    /* simd: GCC's cost model declines these loops at SSE2 width on its own */
    #pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + vd_vexpf(-g)) * up[i];
    }
}

/* silu'(x) = sig(x) (1 + x (1 - sig(x))). Large negative gates: exp(-g) = inf, sig = 0, both 0. */
static void cpu_swiglu_backward(float *dgate, float *dup, const float *gate, const float *up, const float *dout,
                                size_t n) {
    #pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) {
        float g = gate[i];
        float e = vd_vexpf(-g);
        float sig = 1.0f / (1.0f + e);
        float silu = g / (1.0f + e);
        dgate[i] = dout[i] * up[i] * (sig * (1.0f + g * (1.0f - sig)));
        dup[i] = dout[i] * silu;
    }
}

/* Sequences at least this long run attention as per-(batch, head) GEMMs (QK^T, PV and their
 * backward) through BLAS; shorter ones use the direct loops, where call overhead would win. */
int vd_cpu_attention_gemm_min_t = 128;

static void cpu_gemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                     const float *B, int ldb, float beta, float *C, int ldc);


/* Attention index helpers. A query head h reads kv head h / (n_head / n_kv_head): the heads of a
 * group are consecutive, as in HF's repeat_kv. Row r = b*T + t of q starts at q + r*q_stride. */
static inline int attn_kv_head(const vd_attn_shape *s, int h) { return h / (s->n_head / s->n_kv_head); }
static inline size_t attn_q_at(const vd_attn_shape *s, int b, int t, int h) {
    return ((size_t)b * s->T + t) * s->q_stride + (size_t)h * s->head_dim;
}
static inline size_t attn_kv_at(const vd_attn_shape *s, int b, int t, int kvh) {
    return ((size_t)b * s->T + t) * s->kv_stride + (size_t)kvh * s->head_dim;
}
/* out / dout rows are contiguous: n_head * head_dim floats */
static inline size_t attn_o_at(const vd_attn_shape *s, int b, int t, int h) {
    return ((size_t)b * s->T + t) * s->n_head * s->head_dim + (size_t)h * s->head_dim;
}
/* First key query t of sequence b sees: t - pos[t] (its example's first token), 0 without pos.
 * Clamped to [0, t], so a bad position can narrow the window but never read outside it. */
static inline int attn_first_key(const vd_attn_shape *s, int b, int t) {
    if (!s->pos) return 0;
    int lo = t - s->pos[(size_t)b * s->T + t];
    return lo < 0 ? 0 : lo > t ? t : lo;
}

/* Query rows (and key columns) per block of the GEMM path: each block of queries multiplies
 * only the keys up to its last row, so about half of T x T (the masked half) is skipped. */
#define ATTN_BLOCK 64

/* What the CPU's attention keeps for its backward (the seam's att): per query row (b, h, t)
 * the softmax's max score and 1/sum, ATTN_STATS floats at attn_stat_at, never the T x T
 * probabilities (those of every layer would be B*NH*T*T floats each). The backward recomputes
 * the scores from q and k with the forward's own code and these two floats: the same bits. */
#define ATTN_STATS 2

static size_t cpu_attention_saved_floats(const vd_attn_shape *s) {
    return (size_t)s->B * s->n_head * s->T * ATTN_STATS;
}

static inline size_t attn_stat_at(const vd_attn_shape *s, int b, int h, int t) {
    return (((size_t)b * s->n_head + h) * s->T + t) * ATTN_STATS;
}

/* Per-thread scratch of the attention kernels: ATTN_BLOCK rows of T floats per thread (a block
 * of scores, or the direct loops' rows), grown on demand and kept until exit, so no call
 * allocates per head. Taken outside the parallel region; thread i uses slice i. */
static float *g_attn_scratch;
static size_t g_attn_scratch_floats;

static void attn_scratch_free(void) {
    free(g_attn_scratch);
    g_attn_scratch = NULL;
    g_attn_scratch_floats = 0;
}

static float *attn_scratch(int T, size_t *per_thread) {
    static int registered;
    *per_thread = (size_t)ATTN_BLOCK * (size_t)T;
    size_t need = *per_thread * (size_t)omp_get_max_threads();
    if (need > g_attn_scratch_floats) {
        if (!registered && atexit(attn_scratch_free) == 0) registered = 1;
        free(g_attn_scratch);
        g_attn_scratch = mallocCheck(sizeof(float) * need);
        g_attn_scratch_floats = need;
    }
    return g_attn_scratch;
}

/* Softmax of scores a[lo..t] in place: every attention row (both paths, the KV cache) goes
 * through this one summation order. keep (or NULL) receives the max and 1/sum. */
static void attn_softmax_span(float *a, int lo, int t, float *keep) {
    float maxv = -INFINITY;
    for (int t2 = lo; t2 <= t; t2++) if (a[t2] > maxv) maxv = a[t2];
    float sum = 0.0f;
    for (int t2 = lo; t2 <= t; t2++) a[t2] = vd_vexpf(a[t2] - maxv); /* vectorised, then summed in order */
    for (int t2 = lo; t2 <= t; t2++) sum += a[t2];
    float inv = 1.0f / sum;
    for (int t2 = lo; t2 <= t; t2++) a[t2] *= inv;
    if (keep) { keep[0] = maxv; keep[1] = inv; }
}

/* The probabilities attn_softmax_span made of the same scores a[lo..t], from what it kept:
 * each element goes through the same two operations (exp of the difference, times 1/sum). */
static void attn_softmax_again(float *a, int lo, int t, const float *kept) {
    float maxv = kept[0], inv = kept[1];
    for (int t2 = lo; t2 <= t; t2++) a[t2] = vd_vexpf(a[t2] - maxv);
    for (int t2 = lo; t2 <= t; t2++) a[t2] *= inv;
}

/* Probabilities of query block i0..i1-1 of head (b, h) over keys 0..i1-1 into S (rows of T
 * floats; columns i1.. untouched): S = scale Q K^T, then each row's causal softmax over keys
 * lo(t) .. t, 0 elsewhere. The forward (keep: the rows' statistics) and the backward's
 * recompute (kept: from them) both come here, so the backward's P is the forward's bit for
 * bit. Serial: it runs inside the per-head parallel loop. */
static void attn_block_probs(float *S, const float *q, const float *k, const vd_attn_shape *s, int b, int h,
                             int i0, int i1, float scale, float *keep, const float *kept) {
    int T = s->T;
    cpu_gemm(0, 1, i1 - i0, i1, s->head_dim, scale, q + attn_q_at(s, b, i0, h), s->q_stride,
             k + attn_kv_at(s, b, 0, attn_kv_head(s, h)), s->kv_stride, 0.0f, S, T);
    for (int t = i0; t < i1; t++) {
        float *a = S + (size_t)(t - i0) * T;
        int lo = attn_first_key(s, b, t);
        if (keep) attn_softmax_span(a, lo, t, keep + (size_t)(t - i0) * ATTN_STATS);
        else attn_softmax_again(a, lo, t, kept + (size_t)(t - i0) * ATTN_STATS);
        for (int t2 = 0; t2 < lo; t2++) a[t2] = 0.0f;
        for (int t2 = t + 1; t2 < i1; t2++) a[t2] = 0.0f;
    }
}

/* One (batch, head) per iteration of one parallel loop; each thread runs its head's GEMMs on
 * its own (the OpenMP OpenBLAS is single-threaded inside a parallel region), so no thread team
 * is woken per head and the result does not depend on the thread count. Per block of
 * ATTN_BLOCK queries, in the thread's scratch: P = softmax(scale Q K^T) over the keys up to the
 * block's end (attn_block_probs), then O = P V over the same keys; only the row statistics
 * stay (att). */
static void cpu_attention_forward_gemm(float *out, float *att, const float *q, const float *k, const float *v,
                                       const vd_attn_shape *s) {
    int T = s->T, NH = s->n_head, hs = s->head_dim, OC = NH * hs;
    float scale = 1.0f / sqrtf((float)hs);
    size_t per;
    float *scratch = attn_scratch(T, &per);
    #pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < s->B; b++) {
        for (int h = 0; h < NH; h++) {
            float *S = scratch + (size_t)omp_get_thread_num() * per;
            const float *vh = v + attn_kv_at(s, b, 0, attn_kv_head(s, h));
            for (int i0 = 0; i0 < T; i0 += ATTN_BLOCK) {
                int i1 = i0 + ATTN_BLOCK < T ? i0 + ATTN_BLOCK : T;
                attn_block_probs(S, q, k, s, b, h, i0, i1, scale, att + attn_stat_at(s, b, h, i0), NULL);
                cpu_gemm(0, 0, i1 - i0, hs, i1, 1.0f, S, T, vh, s->kv_stride, 0.0f, out + attn_o_at(s, b, i0, h), OC);
            }
        }
    }
}

/* One (batch, kv head) per iteration: it owns that kv head's dK, dV and its group's dQ, so no two
 * threads write the same floats; the heads of a group run in order (the first writes dK, dV with
 * beta 0, the others add). Per head, in its T x T slot of datt: P again, block by block as the
 * forward made it; by key blocks dV (+)= P^T dO over the queries from the block's start (the
 * rows above it are masked); by query blocks dP = dO V^T (the thread's scratch), dS = P (dP -
 * rowsum(P dP)) scale over P, dQ = dS K (keys up to the block's end); by key blocks dK (+)= dS^T Q. */
static void cpu_attention_backward_gemm(float *dq, float *dk, float *dv, float *datt, const float *dout,
                                        const float *q, const float *k, const float *v, const float *att,
                                        const vd_attn_shape *s) {
    int T = s->T, NH = s->n_head, NKV = s->n_kv_head, hs = s->head_dim, OC = NH * hs, group = NH / NKV;
    float scale = 1.0f / sqrtf((float)hs);
    size_t per;
    float *scratch = attn_scratch(T, &per);
    #pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < s->B; b++) {
        for (int kvh = 0; kvh < NKV; kvh++) {
            float *dP = scratch + (size_t)omp_get_thread_num() * per; /* one query block of dO V^T */
            const float *kh = k + attn_kv_at(s, b, 0, kvh), *vh = v + attn_kv_at(s, b, 0, kvh);
            float *dkh = dk + attn_kv_at(s, b, 0, kvh), *dvh = dv + attn_kv_at(s, b, 0, kvh);
            for (int h = kvh * group; h < (kvh + 1) * group; h++) {
                float beta_kv = h == kvh * group ? 0.0f : 1.0f;
                float *P = datt + (((size_t)b * NH + h) * T) * T; /* P, then dS in its place */
                for (int i0 = 0; i0 < T; i0 += ATTN_BLOCK) {
                    int i1 = i0 + ATTN_BLOCK < T ? i0 + ATTN_BLOCK : T;
                    attn_block_probs(P + (size_t)i0 * T, q, k, s, b, h, i0, i1, scale, NULL,
                                     att + attn_stat_at(s, b, h, i0));
                }
                /* rows j0.., columns j0..j1-1: inside the blocks' columns 0..i1-1 that were written */
                for (int j0 = 0; j0 < T; j0 += ATTN_BLOCK) {
                    int j1 = j0 + ATTN_BLOCK < T ? j0 + ATTN_BLOCK : T;
                    cpu_gemm(1, 0, j1 - j0, hs, T - j0, 1.0f, P + (size_t)j0 * T + j0, T, dout + attn_o_at(s, b, j0, h),
                             OC, beta_kv, dvh + (size_t)j0 * s->kv_stride, s->kv_stride);
                }
                for (int i0 = 0; i0 < T; i0 += ATTN_BLOCK) {
                    int i1 = i0 + ATTN_BLOCK < T ? i0 + ATTN_BLOCK : T;
                    cpu_gemm(0, 1, i1 - i0, i1, hs, 1.0f, dout + attn_o_at(s, b, i0, h), OC, vh, s->kv_stride, 0.0f,
                             dP, T);
                    for (int t = i0; t < i1; t++) {
                        float *p = P + (size_t)t * T; /* 0 outside keys lo .. t: so is dS */
                        const float *d = dP + (size_t)(t - i0) * T;
                        int lo = attn_first_key(s, b, t);
                        float dot = 0.0f;
                        for (int t2 = lo; t2 <= t; t2++) dot += p[t2] * d[t2];
                        for (int t2 = lo; t2 <= t; t2++) p[t2] = p[t2] * (d[t2] - dot) * scale;
                    }
                    cpu_gemm(0, 0, i1 - i0, hs, i1, 1.0f, P + (size_t)i0 * T, T, kh, s->kv_stride, 0.0f,
                             dq + attn_q_at(s, b, i0, h), s->q_stride);
                }
                for (int j0 = 0; j0 < T; j0 += ATTN_BLOCK) {
                    int j1 = j0 + ATTN_BLOCK < T ? j0 + ATTN_BLOCK : T;
                    cpu_gemm(1, 0, j1 - j0, hs, T - j0, 1.0f, P + (size_t)j0 * T + j0, T, q + attn_q_at(s, b, j0, h),
                             s->q_stride, beta_kv, dkh + (size_t)j0 * s->kv_stride, s->kv_stride);
                }
            }
        }
    }
}

/* Scores of query qt against keys lo..t into a[lo..t] (key t2 at k0 + t2 * stride), scaled:
 * the direct loops' forward, their backward's recompute and the KV cache all use this. */
static void attn_scores_row(float *a, const float *qt, const float *k0, size_t stride, int lo, int t, int hs,
                            float scale) {
    for (int t2 = lo; t2 <= t; t2++) {
        const float *kt = k0 + (size_t)t2 * stride;
        float sc = 0.0f;
        for (int i = 0; i < hs; i++) sc += qt[i] * kt[i];
        a[t2] = sc * scale;
    }
}

/* One query row of the direct attention loops (the forward's and the KV cache's): key / value t2
 * at k0 / v0 + t2 * stride; scores of keys lo..t into a[lo..t], softmaxed there (keep: the
 * row's statistics, or NULL), then o = sum a[t2] v[t2]. One summation order for both, so a
 * decode step reproduces the forward's row. */
static void attn_row(float *o, float *a, const float *qt, const float *k0, const float *v0, size_t stride, int lo,
                     int t, int hs, float scale, float *keep) {
    attn_scores_row(a, qt, k0, stride, lo, t, hs, scale);
    attn_softmax_span(a, lo, t, keep);
    for (int i = 0; i < hs; i++) o[i] = 0.0f;
    for (int t2 = lo; t2 <= t; t2++) {
        const float *vt = v0 + (size_t)t2 * stride;
        float w = a[t2];
        for (int i = 0; i < hs; i++) o[i] += w * vt[i];
    }
}

static void cpu_attention_forward(float *out, float *att, const float *q, const float *k, const float *v,
                                  const vd_attn_shape *s) {
    vd_require(s->n_kv_head >= 1 && s->n_head % s->n_kv_head == 0);
    if (s->T >= vd_cpu_attention_gemm_min_t) {
        cpu_attention_forward_gemm(out, att, q, k, v, s);
        return;
    }
    int B = s->B, T = s->T, NH = s->n_head, hs = s->head_dim;
    float scale = 1.0f / sqrtf((float)hs);
    size_t per;
    float *scratch = attn_scratch(T, &per);
    #pragma omp parallel for collapse(3) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            for (int t = 0; t < T; t++) {
                int kvh = attn_kv_head(s, h), lo = attn_first_key(s, b, t);
                float *a = scratch + (size_t)omp_get_thread_num() * per; /* the row's scores */
                attn_row(out + attn_o_at(s, b, t, h), a, q + attn_q_at(s, b, t, h), k + attn_kv_at(s, b, 0, kvh),
                         v + attn_kv_at(s, b, 0, kvh), (size_t)s->kv_stride, lo, t, hs, scale,
                         att + attn_stat_at(s, b, h, t));
            }
        }
    }
}

static void cpu_attention_backward(float *dq, float *dk, float *dv, float *datt, const float *dout,
                                   const float *q, const float *k, const float *v, const float *att,
                                   const vd_attn_shape *s) {
    vd_require(s->n_kv_head >= 1 && s->n_head % s->n_kv_head == 0);
    if (s->T >= vd_cpu_attention_gemm_min_t) {
        cpu_attention_backward_gemm(dq, dk, dv, datt, dout, q, k, v, att, s);
        return;
    }
    int B = s->B, T = s->T, NKV = s->n_kv_head, hs = s->head_dim, group = s->n_head / NKV;
    float scale = 1.0f / sqrtf((float)hs);
    size_t per;
    float *scratch = attn_scratch(T, &per);
    /* one (b, kv head) pair per iteration: it owns that kv head's dk, dv slices and the dq slices
     * of its group's query heads, so no two threads write the same floats. The heads of a group
     * run in order, so with group 1 this is GPT-2's (b, h) loop in the same summation order. */
    #pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int kvh = 0; kvh < NKV; kvh++) {
            float *a = scratch + (size_t)omp_get_thread_num() * per, *da = a + T; /* one row of P, of dP */
            for (int t = 0; t < T; t++) {
                float *dkt = dk + attn_kv_at(s, b, t, kvh), *dvt = dv + attn_kv_at(s, b, t, kvh);
                for (int i = 0; i < hs; i++) dkt[i] = 0.0f;
                for (int i = 0; i < hs; i++) dvt[i] = 0.0f;
                for (int h = kvh * group; h < (kvh + 1) * group; h++) {
                    float *dqt = dq + attn_q_at(s, b, t, h);
                    for (int i = 0; i < hs; i++) dqt[i] = 0.0f;
                }
            }
            for (int h = kvh * group; h < (kvh + 1) * group; h++) {
                for (int t = 0; t < T; t++) {
                    const float *go = dout + attn_o_at(s, b, t, h);
                    const float *qt = q + attn_q_at(s, b, t, h);
                    float *dqt = dq + attn_q_at(s, b, t, h);
                    int lo = attn_first_key(s, b, t);
                    /* the forward's probabilities of this row, recomputed as attn_row made them */
                    attn_scores_row(a, qt, k + attn_kv_at(s, b, 0, kvh), (size_t)s->kv_stride, lo, t, hs, scale);
                    attn_softmax_again(a, lo, t, att + attn_stat_at(s, b, h, t));
                    /* through the weighted sum of values */
                    float dot = 0.0f;
                    for (int t2 = lo; t2 <= t; t2++) {
                        const float *vt = v + attn_kv_at(s, b, t2, kvh);
                        float *dvt = dv + attn_kv_at(s, b, t2, kvh);
                        float sc = 0.0f;
                        for (int i = 0; i < hs; i++) { sc += go[i] * vt[i]; dvt[i] += a[t2] * go[i]; }
                        da[t2] = sc;
                        dot += a[t2] * sc;
                    }
                    /* through the softmax and the scaled dot products */
                    for (int t2 = lo; t2 <= t; t2++) {
                        float dpre = a[t2] * (da[t2] - dot) * scale;
                        const float *kt = k + attn_kv_at(s, b, t2, kvh);
                        float *dkt = dk + attn_kv_at(s, b, t2, kvh);
                        for (int i = 0; i < hs; i++) { dqt[i] += dpre * kt[i]; dkt[i] += dpre * qt[i]; }
                    }
                }
            }
        }
    }
}

/* Queries of one sequence against its KV cache (generation): each query row through attn_row,
 * as the direct forward loop; each thread keeps one row of scores. */
static void cpu_attention_cached(float *out, const float *q, const float *kcache, const float *vcache, int n_new,
                                 int pos0, const vd_attn_shape *s) {
    vd_require(s->n_kv_head >= 1 && s->n_head % s->n_kv_head == 0 && n_new >= 0 && pos0 >= 0);
    int NH = s->n_head, hs = s->head_dim, group = NH / s->n_kv_head, Tk = pos0 + n_new;
    float scale = 1.0f / sqrtf((float)hs);
    /* one new token of a small model is less work than waking the threads */
    #pragma omp parallel if ((size_t)n_new * NH * Tk * hs >= 65536)
    {
        float *a = mallocCheck(sizeof(float) * (size_t)(Tk > 0 ? Tk : 1));
        #pragma omp for collapse(2) schedule(static)
        for (int i = 0; i < n_new; i++) {
            for (int h = 0; h < NH; h++) {
                int t = pos0 + i, kvh = h / group;
                const float *qt = q + (size_t)i * s->q_stride + (size_t)h * hs;
                attn_row(out + (size_t)i * NH * hs + (size_t)h * hs, a, qt, kcache + (size_t)kvh * hs,
                         vcache + (size_t)kvh * hs, (size_t)s->kv_stride, 0, t, hs, scale, NULL);
            }
        }
        free(a);
    }
}

#define GELU_SCALE 0.7978845608028654f /* sqrt(2/pi) */
/* GELU, tanh form (transformers' gelu_new), through the identity 0.5 (1 + tanh u) = sigmoid(2u):
 * out = x / (1 + e^{-2u}), u = sqrt(2/pi) (x + 0.044715 x^3). One vector exp per element and no
 * cancellation (1 + tanh u loses digits for negative u; the sigmoid does not). */
static void cpu_gelu_forward(float *out, const float *inp, size_t n) {
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        float u = GELU_SCALE * (x + 0.044715f * x * x * x);
        out[i] = x / (1.0f + vd_vexpf(-2.0f * u));
    }
}

/* d/dx x s(2u) = s + 2 x s (1 - s) u', s = sigmoid(2u), 1 - s = e s with e = e^{-2u} (exact where
 * s is near 1), u' = sqrt(2/pi) (1 + 3 * 0.044715 x^2). */
static void cpu_gelu_backward(float *dinp, const float *inp, const float *dout, size_t n) {
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        float u = GELU_SCALE * (x + 0.044715f * x * x * x);
        float e = vd_vexpf(-2.0f * u);
        float sg = 1.0f / (1.0f + e);
        float local = sg + 2.0f * x * sg * (e * sg) * GELU_SCALE * (1.0f + 3.0f * 0.044715f * x * x);
        dinp[i] = local * dout[i];
    }
}

static void cpu_add(float *out, const float *a, const float *b, size_t n) {
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

static void cpu_accumulate(float *a, const float *b, size_t n) {
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) a[i] += b[i];
}

/* Lanes of the partial sums in softmax_xent: a fixed count, so the order of additions (and the
 * result) is the same whatever SIMD width the compiler picks and however many threads run. */
#define XENT_LANES 16

static void cpu_softmax_xent_forward(float *losses, float *probs, const float *logits, const int32_t *targets,
                                     int N, int V) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *l = logits + (size_t)n * V;
        float *p = probs + (size_t)n * V;
        int32_t tn = targets[n];
        float lt = tn == VD_TARGET_NONE ? 0.0f : l[tn]; /* read first: probs may alias logits */
        int V16 = V / XENT_LANES * XENT_LANES;
        float mx[XENT_LANES];
        for (int j = 0; j < XENT_LANES; j++) mx[j] = -INFINITY;
        for (int v = 0; v < V16; v += XENT_LANES)
            for (int j = 0; j < XENT_LANES; j++) mx[j] = l[v + j] > mx[j] ? l[v + j] : mx[j];
        float maxv = -INFINITY;
        for (int j = 0; j < XENT_LANES; j++) if (mx[j] > maxv) maxv = mx[j];
        for (int v = V16; v < V; v++) if (l[v] > maxv) maxv = l[v];
        double acc[XENT_LANES] = {0};
        for (int v = 0; v < V16; v += XENT_LANES)
            for (int j = 0; j < XENT_LANES; j++) {
                float e = vd_vexpf(l[v + j] - maxv);
                p[v + j] = e;
                acc[j] += e;
            }
        double sum = 0.0;
        for (int j = 0; j < XENT_LANES; j++) sum += acc[j];
        for (int v = V16; v < V; v++) { float e = vd_vexpf(l[v] - maxv); p[v] = e; sum += e; }
        float inv = (float)(1.0 / sum);
        for (int v = 0; v < V; v++) p[v] *= inv;
        /* log-sum-exp form keeps the loss exact even when the target's probability underflows */
        losses[n] = tn == VD_TARGET_NONE ? 0.0f : (float)(log(sum) + maxv - lt);
    }
}

static void cpu_softmax_xent_backward(float *dlogits, const float *probs, const int32_t *targets, float dloss,
                                      int N, int V) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *p = probs + (size_t)n * V;
        float *d = dlogits + (size_t)n * V;
        if (targets[n] == VD_TARGET_NONE) { /* no loss at this position: no gradient either */
            memset(d, 0, sizeof(float) * (size_t)V);
            continue;
        }
        for (int v = 0; v < V; v++) d[v] = p[v] * dloss;
        d[targets[n]] -= dloss;
    }
}

static double cpu_sum(const float *x, size_t n) {
    /* fixed order: the result must not depend on the thread count (determinism) */
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += x[i];
    return s;
}

/* ---- adapter vectors ---- */
static void cpu_scale_cols(float *out, const float *inp, const float *vec, int N, int C) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float *o = out + (size_t)n * C;
        for (int c = 0; c < C; c++) o[c] = x[c] * vec[c];
    }
}

static void cpu_scale_cols_add(float *out, const float *inp, const float *vec, int N, int C) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float *o = out + (size_t)n * C;
        for (int c = 0; c < C; c++) o[c] += x[c] * vec[c];
    }
}

static void cpu_scale_rows(float *out, const float *inp, const float *vec, int N, int C) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float *o = out + (size_t)n * C;
        for (int c = 0; c < C; c++) o[c] = x[c] * vec[n];
    }
}

static void cpu_vera_vector_grads(float *db, float *dd, const float *M, const float *Bs, const float *b,
                                  const float *d, int out, int r) {
    /* db: one row of M per output */
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < out; i++) {
        const float *m = M + (size_t)i * r;
        const float *bb = Bs + (size_t)i * r;
        float s = 0.0f;
        for (int k = 0; k < r; k++) s += bb[k] * d[k] * m[k];
        db[i] += s;
    }
    /* dd: a column reduction, kept serial over i (fixed order) and parallel over blocks of k;
     * each block walks the rows of M and B contiguously (a column walk would touch one float
     * per cache line), summing each k over i in the same order */
    enum { KB = 64 };
    #pragma omp parallel for schedule(static)
    for (int k0 = 0; k0 < r; k0 += KB) {
        int kn = r - k0 < KB ? r - k0 : KB;
        float s[KB] = {0};
        for (int i = 0; i < out; i++) {
            const float *bb = Bs + (size_t)i * r + k0, *m = M + (size_t)i * r + k0;
            float bi = b[i];
            for (int k = 0; k < kn; k++) s[k] += bi * bb[k] * m[k];
        }
        for (int k = 0; k < kn; k++) dd[k0 + k] += s[k];
    }
}

float vd_dropout_uniform(uint64_t seed, uint64_t row, uint64_t col) {
    uint64_t h = vd_mix64(seed ^ vd_mix64(row * 0x9E3779B97F4A7C15ULL + col));
    return (float)(h >> 40) * (1.0f / 16777216.0f);
}

static void cpu_dropout(float *out, const float *inp, int N, int C, float p, uint64_t seed, uint64_t row0) {
    float keep_scale = 1.0f / (1.0f - p);
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float *o = out + (size_t)n * C;
        for (int c = 0; c < C; c++) {
            float u = vd_dropout_uniform(seed, row0 + (uint64_t)n, (uint64_t)c);
            o[c] = u >= p ? x[c] * keep_scale : 0.0f;
        }
    }
}

/* ---- VB-LoRA ---- */
static void cpu_vblora_topk(int32_t *idx, float *w, const float *logits, int n, int nv, int k) {
    #pragma omp parallel for schedule(static)
    for (int s = 0; s < n; s++)
        vd_vblora_topk_row(idx + (size_t)s * k, w + (size_t)s * k, logits + (size_t)s * nv, nv, k);
}

static void cpu_vblora_compose(float *out, const float *bank, const int32_t *idx, const float *w,
                               const vd_vblora_shape *sh) {
    int n = sh->n_outer * sh->n_inner;
    #pragma omp parallel for schedule(static)
    for (int s = 0; s < n; s++) {
        float *o = out + (size_t)(s / sh->n_inner) * sh->so + (size_t)(s % sh->n_inner) * sh->si;
        const int32_t *ix = idx + (size_t)s * sh->k;
        const float *ws = w + (size_t)s * sh->k;
        for (int l = 0; l < sh->L; l++) {
            float acc = 0.0f;
            for (int j = 0; j < sh->k; j++) acc += ws[j] * bank[(size_t)ix[j] * sh->L + l];
            o[(size_t)l * sh->sl] = acc;
        }
    }
}

static void cpu_vblora_compose_backward(float *dlogits, float *dbank, const float *dmat, const float *bank,
                                        const int32_t *idx, const float *w, const vd_vblora_shape *sh) {
    int n = sh->n_outer * sh->n_inner;
    /* logits: each sub-vector owns its row */
    #pragma omp parallel for schedule(static)
    for (int s = 0; s < n; s++) {
        const float *g = dmat + (size_t)(s / sh->n_inner) * sh->so + (size_t)(s % sh->n_inner) * sh->si;
        vd_vblora_dlogits_row(dlogits + (size_t)s * sh->nv, g, sh->sl, bank, sh->L, idx + (size_t)s * sh->k,
                              w + (size_t)s * sh->k, sh->k);
    }
    /* bank: sub-vectors share rows, so split the columns l instead; every element sums its
     * contributions in the order s, j ascending whatever the thread count */
    #pragma omp parallel for schedule(static)
    for (int l = 0; l < sh->L; l++) {
        for (int s = 0; s < n; s++) {
            float g = dmat[(size_t)(s / sh->n_inner) * sh->so + (size_t)(s % sh->n_inner) * sh->si +
                           (size_t)l * sh->sl];
            for (int j = 0; j < sh->k; j++)
                dbank[(size_t)idx[(size_t)s * sh->k + j] * sh->L + l] += w[(size_t)s * sh->k + j] * g;
        }
    }
}

/* ---- optimizer ---- */
static double cpu_sum_sq(const float *x, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)x[i] * x[i];
    return s;
}

static void cpu_adamw(float *params, const float *grads, float *m, float *v, size_t n, float lr, float beta1,
                      float beta2, float eps, float weight_decay, int32_t t, float grad_scale) {
    /* torch.optim.AdamW (single-tensor path): decay, lerp the first moment, then addcdiv */
    float bc1 = 1.0f - powf(beta1, (float)t);
    float bc2_sqrt = sqrtf(1.0f - powf(beta2, (float)t));
    float step_size = lr / bc1;
    for (size_t i = 0; i < n; i++) {
        float g = grads[i] * grad_scale;
        float p = params[i] * (1.0f - lr * weight_decay);
        m[i] += (1.0f - beta1) * (g - m[i]);
        v[i] = v[i] * beta2 + (1.0f - beta2) * g * g;
        float denom = sqrtf(v[i]) / bc2_sqrt + eps;
        params[i] = p - step_size * (m[i] / denom);
    }
}

static const vd_comm *g_comm = NULL;

static void cpu_allreduce_sum(float *buf, size_t count) {
    if (g_comm) vd_comm_allreduce_sum_f32(g_comm, buf, count);
}

static const vd_backend g_cpu = {
    .name = "cpu",
    .alloc = cpu_alloc,
    .free = cpu_free,
    .to_device = cpu_memcpy,
    .to_host = cpu_memcpy,
    .zero = cpu_zero,
    .copy = cpu_memcpy,
    .gemm = cpu_gemm,
    .gemm_ex = vd_cpu_gemm_ex,
    .to_bf16 = vd_cpu_to_bf16,
    .set_tf32 = NULL, /* no TF32 on the CPU: the CLI refuses --precision tf32 */
    .add_bias = cpu_add_bias,
    .encoder_forward = cpu_encoder_forward,
    .layernorm_forward = cpu_layernorm_forward,
    .layernorm_backward = cpu_layernorm_backward,
    .rmsnorm_forward = cpu_rmsnorm_forward,
    .rmsnorm_backward = cpu_rmsnorm_backward,
    .rope = cpu_rope,
    .attention_forward = cpu_attention_forward,
    .attention_saved_floats = cpu_attention_saved_floats,
    .attention_backward = cpu_attention_backward,
    .attention_cached = cpu_attention_cached,
    .gelu_forward = cpu_gelu_forward,
    .gelu_backward = cpu_gelu_backward,
    .swiglu_forward = cpu_swiglu_forward,
    .swiglu_backward = cpu_swiglu_backward,
    .add = cpu_add,
    .accumulate = cpu_accumulate,
    .softmax_xent_forward = cpu_softmax_xent_forward,
    .softmax_xent_backward = cpu_softmax_xent_backward,
    .sum = cpu_sum,
    .scale_cols = cpu_scale_cols,
    .scale_cols_add = cpu_scale_cols_add,
    .scale_rows = cpu_scale_rows,
    .vera_vector_grads = cpu_vera_vector_grads,
    .dropout = cpu_dropout,
    .vblora_topk = cpu_vblora_topk,
    .vblora_compose = cpu_vblora_compose,
    .vblora_compose_backward = cpu_vblora_compose_backward,
    .sum_sq = cpu_sum_sq,
    .adamw = cpu_adamw,
    .allreduce_sum = cpu_allreduce_sum,
};

const vd_backend *vd_backend_cpu_init(const vd_comm *comm) {
    g_comm = comm;
    return &g_cpu;
}

const vd_backend *vd_backend_cpu(void) { return &g_cpu; }

size_t vd_attention_saved_floats(const vd_backend *be, const vd_attn_shape *s) {
    return (be ? be : &g_cpu)->attention_saved_floats(s);
}
