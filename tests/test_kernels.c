/* test_kernels.c: the CPU backend's attention (grouped-query heads, strided q/k/v) on both of
 * its paths (direct loops for short sequences, BLAS GEMMs for long ones), on random inputs:
 *   forward   out against a double-precision reference written here (the backend keeps only
 *             per-row softmax statistics: attention_saved_floats(s) floats, its own business);
 *   backward  dq, dk, dv against central finite differences of L = sum R * attention(q, k, v)
 *             through the double reference (tight), and through the backend's own float
 *             forward on a sample (loose, as this test always did); dq/dk/dv are written, not
 *             accumulated (the buffers start as garbage) and their padding columns untouched;
 *   paths     loops vs GEMMs, and each path on 1 vs 3 threads (bit for bit);
 *   bits      each path against the kernels as they were when att held the whole softmax
 *             (attn_reference.h), with and without packed positions: out, dq, dk, dv bit for bit
 *             (the backward recomputes P exactly as the forward made it).
 * Cases: GPT-2's fused qkv; separate padded q/k/v with 2 kv groups and with none; a fused
 * Llama-style row with one kv head; a sequence of three of the GEMM path's causal blocks;
 * head_dim never C/n_head of a nominal hidden size. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attn_reference.h"
#include "test_util.h"
#include "vera/backend.h"
#include "vera/prng.h"

static float urand(uint64_t *s) { *s = vd_mix64(*s + 0x9E3779B97F4A7C15ULL); return (float)((double)(*s >> 11) / 9007199254740992.0 * 2.0 - 1.0); }

/* Garbage the backward must overwrite (head columns) or leave alone (padding columns). */
#define SENTINEL 1000.0f

/* One test case: how q, k, v lie in memory. */
typedef struct {
    const char *name;
    int B, T, NH, NKV, hd;
    int fused; /* 1: one buffer, rows [q heads | k heads | v heads | pad]; 0: three buffers */
    int pad;   /* extra floats at the end of each row (of each buffer when not fused) */
} attn_case;

/* The largest errors seen, over all cases (the report prints them). */
static double g_err_fwd_ref, g_err_grad_fd, g_err_grad_ffd, g_err_paths;

/* Double-precision reference: out (B,T,NH*hd), att (B,NH,T,T) from q/k/v at the given strides. */
static void ref_attention(double *out, double *att, const double *q, const double *k, const double *v,
                          const vd_attn_shape *s) {
    int T = s->T, NH = s->n_head, hd = s->head_dim, group = s->n_head / s->n_kv_head;
    for (int b = 0; b < s->B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                const double *qt = q + ((size_t)b * T + t) * s->q_stride + (size_t)h * hd;
                double *a = att + (((size_t)b * NH + h) * T + t) * T;
                double maxv = -INFINITY, sum = 0.0;
                for (int t2 = 0; t2 < T; t2++) {
                    if (t2 > t) { a[t2] = 0.0; continue; }
                    const double *kt = k + ((size_t)b * T + t2) * s->kv_stride + (size_t)(h / group) * hd;
                    double d = 0.0;
                    for (int i = 0; i < hd; i++) d += qt[i] * kt[i];
                    a[t2] = d / sqrt((double)hd);
                    if (a[t2] > maxv) maxv = a[t2];
                }
                for (int t2 = 0; t2 <= t; t2++) { a[t2] = exp(a[t2] - maxv); sum += a[t2]; }
                for (int t2 = 0; t2 <= t; t2++) a[t2] /= sum;
                double *o = out + ((size_t)b * T + t) * NH * hd + (size_t)h * hd;
                for (int i = 0; i < hd; i++) {
                    double acc = 0.0;
                    for (int t2 = 0; t2 <= t; t2++)
                        acc += a[t2] * v[((size_t)b * T + t2) * s->kv_stride + (size_t)(h / group) * hd + i];
                    o[i] = acc;
                }
            }
}

/* Buffers of one case. Index 0, 1, 2 = q, k, v; base[j] is where tensor j's rows start. */
typedef struct {
    vd_attn_shape s;
    size_t nbuf[3];  /* floats of each buffer (fused: all three views share buffer 0) */
    size_t off[3];   /* tensor j starts at buf[j or 0] + off[j] */
    int stride[3], width[3];
    int fused;
} layout;

static layout make_layout(const attn_case *c) {
    layout L = {0};
    L.fused = c->fused;
    L.s = (vd_attn_shape){.B = c->B, .T = c->T, .n_head = c->NH, .n_kv_head = c->NKV, .head_dim = c->hd};
    L.width[0] = c->NH * c->hd;
    L.width[1] = L.width[2] = c->NKV * c->hd;
    size_t rows = (size_t)c->B * c->T;
    if (c->fused) {
        int row = L.width[0] + 2 * L.width[1] + c->pad;
        L.s.q_stride = L.s.kv_stride = row;
        L.off[1] = (size_t)L.width[0];
        L.off[2] = (size_t)L.width[0] + L.width[1];
        L.nbuf[0] = rows * row;
    } else {
        L.s.q_stride = L.width[0] + c->pad;
        L.s.kv_stride = L.width[1] + c->pad;
        L.nbuf[0] = rows * L.s.q_stride;
        L.nbuf[1] = L.nbuf[2] = rows * L.s.kv_stride;
    }
    for (int j = 0; j < 3; j++) L.stride[j] = j == 0 ? L.s.q_stride : L.s.kv_stride;
    return L;
}

/* Float and double copies of the three inputs and of the gradients, laid out by L. */
typedef struct { float *f[3]; double *d[3]; } bufs;

static void alloc_bufs(bufs *x, const layout *L, int with_double) {
    for (int j = 0; j < 3; j++) {
        x->f[j] = NULL; x->d[j] = NULL;
        if (L->fused && j > 0) continue;
        x->f[j] = malloc(sizeof(float) * L->nbuf[j]);
        if (with_double) x->d[j] = malloc(sizeof(double) * L->nbuf[j]);
    }
}
static void free_bufs(bufs *x) { for (int j = 0; j < 3; j++) { free(x->f[j]); free(x->d[j]); } }
static float *fview(const bufs *x, const layout *L, int j) { return (L->fused ? x->f[0] : x->f[j]) + L->off[j]; }
static double *dview(const bufs *x, const layout *L, int j) { return (L->fused ? x->d[0] : x->d[j]) + L->off[j]; }
/* element (row n, column c) of tensor j, c < width[j] */
static size_t at(const layout *L, int j, size_t n, int c) { return n * L->stride[j] + c; }

/* L = sum R * out, the scalar every finite difference differentiates */
static double ref_loss(const layout *L, const bufs *in, const double *R, double *out, double *att) {
    ref_attention(out, att, dview(in, L, 0), dview(in, L, 1), dview(in, L, 2), &L->s);
    size_t no = (size_t)L->s.B * L->s.T * L->width[0];
    double acc = 0.0;
    for (size_t i = 0; i < no; i++) acc += R[i] * out[i];
    return acc;
}
static double backend_loss(const vd_backend *be, const layout *L, const bufs *in, const float *R, float *out,
                           float *att) {
    be->attention_forward(out, att, fview(in, L, 0), fview(in, L, 1), fview(in, L, 2), &L->s);
    size_t no = (size_t)L->s.B * L->s.T * L->width[0];
    double acc = 0.0;
    for (size_t i = 0; i < no; i++) acc += (double)R[i] * out[i];
    return acc;
}

static void run_backward(const vd_backend *be, const layout *L, bufs *g, float *datt, const float *R,
                         const bufs *in, const float *att) {
    for (int j = 0; j < 3; j++) if (g->f[j]) for (size_t i = 0; i < L->nbuf[j]; i++) g->f[j][i] = SENTINEL;
    be->attention_backward(fview(g, L, 0), fview(g, L, 1), fview(g, L, 2), datt, R, fview(in, L, 0),
                           fview(in, L, 1), fview(in, L, 2), att, &L->s);
}

static double max_d(double a, double b) { return a > b ? a : b; }

static void test_case(const vd_backend *be, const attn_case *c, uint64_t seed) {
    layout L = make_layout(c);
    const vd_attn_shape *s = &L.s;
    int B = s->B, T = s->T, NH = s->n_head;
    size_t rows = (size_t)B * T, no = rows * L.width[0], natt = (size_t)B * NH * T * T;
    size_t nsaved = be->attention_saved_floats(s); /* the forward's state for the backward */
    bufs in, grad[2], grad3;
    alloc_bufs(&in, &L, 1);
    alloc_bufs(&grad[0], &L, 0);
    alloc_bufs(&grad[1], &L, 0);
    alloc_bufs(&grad3, &L, 0);
    /* every float of the inputs random (padding too: it must not leak into the results) */
    for (int j = 0; j < 3; j++)
        if (in.f[j]) for (size_t i = 0; i < L.nbuf[j]; i++) { in.f[j][i] = 2.0f * urand(&seed); in.d[j][i] = in.f[j][i]; }
    float *R = malloc(sizeof(float) * no), *datt = malloc(sizeof(float) * natt);
    double *Rd = malloc(sizeof(double) * no), *rout = malloc(sizeof(double) * no), *ratt = malloc(sizeof(double) * natt);
    for (size_t i = 0; i < no; i++) { R[i] = urand(&seed); Rd[i] = R[i]; }
    float *out[2], *att[2];
    char what[160];

    ref_attention(rout, ratt, dview(&in, &L, 0), dview(&in, &L, 1), dview(&in, &L, 2), s);
    for (int path = 0; path < 2; path++) {
        vd_cpu_attention_gemm_min_t = path == 0 ? 1 << 30 : 1; /* 0: loops, 1: GEMMs */
        out[path] = malloc(sizeof(float) * no);
        att[path] = malloc(sizeof(float) * nsaved);
        be->attention_forward(out[path], att[path], fview(&in, &L, 0), fview(&in, &L, 1), fview(&in, &L, 2), s);
        snprintf(what, sizeof(what), "%s path %d: out vs double reference", c->name, path);
        for (size_t i = 0; i < no; i++) {
            CHECK_CLOSE(out[path][i], rout[i], 1e-5, 1e-6, what);
            g_err_fwd_ref = max_d(g_err_fwd_ref, fabs(out[path][i] - rout[i]));
        }

        run_backward(be, &L, &grad[path], datt, R, &in, att[path]);
        /* central differences through the double reference: exact to ~1e-9 at this step */
        double *o = malloc(sizeof(double) * no), *a = malloc(sizeof(double) * natt);
        for (int j = 0; j < 3; j++) {
            double *x = dview(&in, &L, j);
            const float *gx = fview(&grad[path], &L, j);
            for (size_t n = 0; n < rows; n++)
                for (int col = 0; col < L.width[j]; col++) {
                    size_t i = at(&L, j, n, col);
                    double keep = x[i], hstep = 1e-4;
                    x[i] = keep + hstep;
                    double lp = ref_loss(&L, &in, Rd, o, a);
                    x[i] = keep - hstep;
                    double lm = ref_loss(&L, &in, Rd, o, a);
                    x[i] = keep;
                    double fd = (lp - lm) / (2.0 * hstep);
                    snprintf(what, sizeof(what), "%s path %d: d%c[row %zu, col %d] vs finite difference", c->name,
                             path, "qkv"[j], n, col);
                    CHECK_CLOSE(gx[i], fd, 1e-4, 1e-5, what);
                    g_err_grad_fd = max_d(g_err_grad_fd, fabs(gx[i] - fd));
                }
            /* padding columns: the backward never writes them (in a fused row only v has any after it) */
            int pad_end = !L.fused ? L.stride[j] : j == 2 ? L.stride[j] - (int)L.off[j] : L.width[j];
            for (size_t n = 0; n < rows; n++)
                for (int col = L.width[j]; col < pad_end; col++) {
                    CHECK(gx[at(&L, j, n, col)] == SENTINEL, "%s path %d: d%c padding [row %zu, col %d] written",
                          c->name, path, "qkv"[j], n, col);
                }
        }
        free(o);
        free(a);
        /* central differences through the backend's own float forward, on a sample */
        float *of = malloc(sizeof(float) * no), *af = malloc(sizeof(float) * nsaved);
        for (int j = 0; j < 3; j++) {
            float *x = fview(&in, &L, j);
            const float *gx = fview(&grad[path], &L, j);
            for (size_t n = 0; n < rows; n++)
                for (int col = (int)(n % 3); col < L.width[j]; col += 3) {
                    size_t i = at(&L, j, n, col);
                    float keep = x[i];
                    const float hstep = 1e-2f;
                    x[i] = keep + hstep;
                    double lp = backend_loss(be, &L, &in, R, of, af);
                    x[i] = keep - hstep;
                    double lm = backend_loss(be, &L, &in, R, of, af);
                    x[i] = keep;
                    double fd = (lp - lm) / (2.0 * hstep);
                    snprintf(what, sizeof(what), "%s path %d: d%c[row %zu, col %d] vs float finite difference",
                             c->name, path, "qkv"[j], n, col);
                    CHECK_CLOSE(gx[i], fd, 2e-2, 2e-3, what);
                    g_err_grad_ffd = max_d(g_err_grad_ffd, fabs(gx[i] - fd));
                }
        }
        free(of);
        free(af);
    }
    /* the two paths agree closely (different summation orders only) */
    snprintf(what, sizeof(what), "%s: GEMM path vs loops", c->name);
    for (size_t i = 0; i < no; i++) {
        CHECK_CLOSE(out[1][i], out[0][i], 1e-5, 1e-6, what);
        g_err_paths = max_d(g_err_paths, fabs(out[1][i] - out[0][i]));
    }
    for (int j = 0; j < 3; j++)
        for (size_t n = 0; n < rows; n++)
            for (int col = 0; col < L.width[j]; col++) {
                size_t i = at(&L, j, n, col);
                float g0 = fview(&grad[0], &L, j)[i], g1 = fview(&grad[1], &L, j)[i];
                CHECK_CLOSE(g1, g0, 1e-4, 1e-6, what);
                g_err_paths = max_d(g_err_paths, fabs(g1 - g0));
            }
    /* both paths on 3 threads: every float has one writer in a fixed order (the GEMM path runs
     * one head per thread, its GEMMs single-threaded), so the same bits as on 1 thread */
    for (int path = 0; path < 2; path++) {
        vd_cpu_attention_gemm_min_t = path == 0 ? 1 << 30 : 1;
        vd_backend_cpu_set_threads(3);
        float *o3 = malloc(sizeof(float) * no), *a3 = malloc(sizeof(float) * nsaved);
        be->attention_forward(o3, a3, fview(&in, &L, 0), fview(&in, &L, 1), fview(&in, &L, 2), s);
        run_backward(be, &L, &grad3, datt, R, &in, a3);
        vd_backend_cpu_set_threads(1);
        CHECK(memcmp(o3, out[path], sizeof(float) * no) == 0, "%s path %d, 3 threads vs 1: out differs", c->name, path);
        CHECK(memcmp(a3, att[path], sizeof(float) * nsaved) == 0, "%s path %d, 3 threads vs 1: att differs",
              c->name, path);
        for (int j = 0; j < 3; j++)
            if (grad3.f[j])
                CHECK(memcmp(grad3.f[j], grad[path].f[j], sizeof(float) * L.nbuf[j]) == 0,
                      "%s path %d, 3 threads vs 1: gradient buffer %d differs", c->name, path, j);
        free(o3); free(a3);
    }
    vd_cpu_attention_gemm_min_t = 128;

    for (int p = 0; p < 2; p++) { free(out[p]); free(att[p]); free_bufs(&grad[p]); }
    free_bufs(&grad3);
    free_bufs(&in);
    free(R); free(datt); free(Rd); free(rout); free(ratt);
}

/* Both paths, without and with packed positions (examples of 1..12 tokens), against the
 * kernels that kept P (attn_reference.h): out and every gradient buffer (padding included)
 * bit for bit, on 1 thread. */
static int g_bits_compared;

static void test_bits(const vd_backend *be, const attn_case *c, uint64_t seed) {
    layout L = make_layout(c);
    vd_attn_shape s = L.s;
    int B = s.B, T = s.T;
    size_t rows = (size_t)B * T, no = rows * L.width[0], natt = (size_t)B * s.n_head * T * T;
    bufs in, g_new, g_ref;
    alloc_bufs(&in, &L, 0);
    alloc_bufs(&g_new, &L, 0);
    alloc_bufs(&g_ref, &L, 0);
    for (int j = 0; j < 3; j++)
        if (in.f[j]) for (size_t i = 0; i < L.nbuf[j]; i++) in.f[j][i] = 2.0f * urand(&seed);
    float *dout = malloc(sizeof(float) * no), *o_new = malloc(sizeof(float) * no), *o_ref = malloc(sizeof(float) * no);
    float *saved = malloc(sizeof(float) * be->attention_saved_floats(&s));
    float *P = malloc(sizeof(float) * natt), *datt = malloc(sizeof(float) * natt);
    int32_t *pos = malloc(sizeof(int32_t) * rows);
    for (size_t i = 0; i < no; i++) dout[i] = urand(&seed);
    for (int b = 0; b < B; b++)
        for (int t = 0, e = 0; t < T; e++) {
            int len = 1 + (int)(vd_mix64(seed + (uint64_t)(b * 1000 + e)) % 12);
            for (int i = 0; i < len && t < T; i++, t++) pos[b * T + t] = i;
        }
    for (int packed = 0; packed < 2; packed++)
        for (int path = 0; path < 2; path++) {
            vd_cpu_attention_gemm_min_t = path == 0 ? 1 << 30 : 1;
            s.pos = packed ? pos : NULL;
            be->attention_forward(o_new, saved, fview(&in, &L, 0), fview(&in, &L, 1), fview(&in, &L, 2), &s);
            ref_attention_forward(be, path, o_ref, P, fview(&in, &L, 0), fview(&in, &L, 1), fview(&in, &L, 2), &s);
            CHECK(memcmp(o_new, o_ref, sizeof(float) * no) == 0, "%s path %d%s: out differs from the reference",
                  c->name, path, packed ? " packed" : "");
            for (int j = 0; j < 3; j++)
                if (g_new.f[j])
                    for (size_t i = 0; i < L.nbuf[j]; i++) g_new.f[j][i] = g_ref.f[j][i] = SENTINEL;
            be->attention_backward(fview(&g_new, &L, 0), fview(&g_new, &L, 1), fview(&g_new, &L, 2), datt, dout,
                                   fview(&in, &L, 0), fview(&in, &L, 1), fview(&in, &L, 2), saved, &s);
            ref_attention_backward(be, path, fview(&g_ref, &L, 0), fview(&g_ref, &L, 1), fview(&g_ref, &L, 2), datt,
                                   dout, fview(&in, &L, 0), fview(&in, &L, 1), fview(&in, &L, 2), P, &s);
            for (int j = 0; j < 3; j++)
                if (g_new.f[j])
                    CHECK(memcmp(g_new.f[j], g_ref.f[j], sizeof(float) * L.nbuf[j]) == 0,
                          "%s path %d%s: gradient buffer %d differs from the reference", c->name, path,
                          packed ? " packed" : "", j);
            g_bits_compared++;
        }
    vd_cpu_attention_gemm_min_t = 128;
    free_bufs(&in); free_bufs(&g_new); free_bufs(&g_ref);
    free(dout); free(o_new); free(o_ref); free(saved); free(P); free(datt); free(pos);
}

int main(void) {
    const vd_backend *be = vd_backend_cpu();
    vd_backend_cpu_set_threads(1);
    const attn_case cases[] = {
        /* GPT-2: C 12, 3 heads of 4, q/k/v fused in rows of 3C */
        {"gpt2 fused", 2, 9, 3, 3, 4, 1, 0},
        /* Llama-style GQA, 2 kv groups (n_head 4, n_kv_head 2), head_dim 6 (a hidden size of 16
         * would give 4), separate padded buffers */
        {"gqa 2 groups", 2, 9, 4, 2, 6, 0, 5},
        /* no groups (n_kv_head == n_head), head_dim 6, separate padded buffers */
        {"mha separate", 2, 9, 4, 4, 6, 0, 3},
        /* one kv head for all 4 query heads, fused Llama-style [q | k | v | pad] rows */
        {"mqa fused", 2, 7, 4, 1, 5, 1, 2},
        /* longer than two of the GEMM path's query / key blocks (64), the last one partial */
        {"gqa long", 1, 133, 2, 1, 4, 0, 1},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) test_case(be, &cases[i], 42 + i);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) test_bits(be, &cases[i], 77 + i);
    printf("max |err|: out vs double ref %.3g, dq/dk/dv vs double FD %.3g, vs float FD %.3g, GEMM vs loops %.3g; "
           "%d comparisons with the materialised-softmax kernels, bit for bit\n",
           g_err_fwd_ref, g_err_grad_fd, g_err_grad_ffd, g_err_paths, g_bits_compared);
    TEST_END();
}
