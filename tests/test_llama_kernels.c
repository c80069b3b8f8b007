/* test_llama_kernels.c: the CPU backend's Llama ops (RMSNorm, RoPE, SwiGLU) against
 * double-precision references written here (HF LlamaForCausalLM semantics), plus a few
 * hand-computed values that pin the references themselves to HF (mean not sum, rotate_half
 * pairing, SiLU); every backward against central finite differences of a scalar
 * L = sum R * op(x): through the double reference (tight) and through the backend's own float
 * forward (loose). RoPE also: rope then inverse rope is the identity, rows of row_stride >
 * n_heads*head_dim keep their padding, and the angle is the fp32 product t * inv_freq (long
 * positions tell it from a double one). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"
#include "vera/backend.h"
#include "vera/prng.h"

static float urand(uint64_t *s) { *s = vd_mix64(*s + 0x9E3779B97F4A7C15ULL); return (float)((double)(*s >> 11) / 9007199254740992.0 * 2.0 - 1.0); }
static double max_d(double a, double b) { return a > b ? a : b; }

/* Largest errors seen (printed at the end). */
static double e_rms_fwd, e_rms_fd, e_rms_ffd, e_rope_fwd, e_rope_inv, e_rope_fd, e_rope_ffd;
static double e_swi_fwd, e_swi_fd, e_swi_ffd;

/* ================================ RMSNorm ================================ */

/* out (N,C), rstd (N) in double: rstd = 1/sqrt(mean x^2 + eps), out = x rstd w */
static void ref_rmsnorm(double *out, double *rstd, const double *x, const float *w, int N, int C, double eps) {
    for (int n = 0; n < N; n++) {
        double ss = 0.0;
        for (int c = 0; c < C; c++) ss += x[(size_t)n * C + c] * x[(size_t)n * C + c];
        double s = 1.0 / sqrt(ss / C + eps);
        for (int c = 0; c < C; c++) out[(size_t)n * C + c] = x[(size_t)n * C + c] * s * w[c];
        if (rstd) rstd[n] = s;
    }
}

static double rms_ref_loss(const double *x, const float *w, const double *R, double *tmp, int N, int C, double eps) {
    ref_rmsnorm(tmp, NULL, x, w, N, C, eps);
    double L = 0.0;
    for (size_t i = 0; i < (size_t)N * C; i++) L += R[i] * tmp[i];
    return L;
}

static double rms_backend_loss(const vd_backend *be, const float *x, const float *w, const float *R, float *tmp,
                               float *rstd, int N, int C, float eps) {
    be->rmsnorm_forward(tmp, rstd, x, w, N, C, eps);
    double L = 0.0;
    for (size_t i = 0; i < (size_t)N * C; i++) L += (double)R[i] * tmp[i];
    return L;
}

static void test_rmsnorm_case(const vd_backend *be, int N, int C, float eps, float xscale, uint64_t seed) {
    size_t NC = (size_t)N * C;
    float *x = malloc(sizeof(float) * NC), *w = malloc(sizeof(float) * C), *R = malloc(sizeof(float) * NC);
    float *out = malloc(sizeof(float) * NC), *rstd = malloc(sizeof(float) * N), *dx = malloc(sizeof(float) * NC);
    float *prior = malloc(sizeof(float) * NC), *tmp = malloc(sizeof(float) * NC), *rtmp = malloc(sizeof(float) * N);
    double *xd = malloc(sizeof(double) * NC), *Rd = malloc(sizeof(double) * NC), *ro = malloc(sizeof(double) * NC);
    double *rr = malloc(sizeof(double) * N), *dtmp = malloc(sizeof(double) * NC);
    for (size_t i = 0; i < NC; i++) { x[i] = xscale * urand(&seed); xd[i] = x[i]; R[i] = urand(&seed); Rd[i] = R[i]; }
    for (int c = 0; c < C; c++) w[c] = 1.0f + 0.5f * urand(&seed);
    char what[128];

    be->rmsnorm_forward(out, rstd, x, w, N, C, eps);
    ref_rmsnorm(ro, rr, xd, w, N, C, eps);
    snprintf(what, sizeof(what), "rmsnorm N %d C %d: rstd vs double reference", N, C);
    for (int n = 0; n < N; n++) CHECK_CLOSE(rstd[n], rr[n], 1e-6, 0.0, what);
    snprintf(what, sizeof(what), "rmsnorm N %d C %d: out vs double reference", N, C);
    for (size_t i = 0; i < NC; i++) {
        CHECK_CLOSE(out[i], ro[i], 1e-6, 1e-7, what);
        e_rms_fwd = max_d(e_rms_fwd, fabs(out[i] - ro[i]) / (1e-7 + fabs(ro[i])));
    }

    /* backward accumulates: start from random values and compare the increment */
    for (size_t i = 0; i < NC; i++) prior[i] = dx[i] = urand(&seed);
    be->rmsnorm_backward(dx, R, x, w, rstd, N, C);
    if (NC <= 4096) {
        for (size_t i = 0; i < NC; i++) {
            double keep = xd[i], h = 1e-4 * (1.0 + fabs(keep));
            xd[i] = keep + h;
            double lp = rms_ref_loss(xd, w, Rd, dtmp, N, C, eps);
            xd[i] = keep - h;
            double lm = rms_ref_loss(xd, w, Rd, dtmp, N, C, eps);
            xd[i] = keep;
            double fd = (lp - lm) / (2.0 * h), got = (double)dx[i] - prior[i];
            snprintf(what, sizeof(what), "rmsnorm N %d C %d: dinp[%zu] increment vs finite difference", N, C, i);
            CHECK_CLOSE(got, fd, 1e-4, 1e-5, what);
            e_rms_fd = max_d(e_rms_fd, fabs(got - fd));
        }
        for (size_t i = 0; i < NC; i += 3) {
            float keep = x[i];
            const float h = 1e-2f * xscale;
            x[i] = keep + h;
            double lp = rms_backend_loss(be, x, w, R, tmp, rtmp, N, C, eps);
            x[i] = keep - h;
            double lm = rms_backend_loss(be, x, w, R, tmp, rtmp, N, C, eps);
            x[i] = keep;
            double fd = (lp - lm) / (2.0 * h), got = (double)dx[i] - prior[i];
            snprintf(what, sizeof(what), "rmsnorm N %d C %d: dinp[%zu] vs float finite difference", N, C, i);
            CHECK_CLOSE(got, fd, 2e-2, 2e-3, what);
            e_rms_ffd = max_d(e_rms_ffd, fabs(got - fd));
        }
    }
    free(x); free(w); free(R); free(out); free(rstd); free(dx); free(prior); free(tmp); free(rtmp);
    free(xd); free(Rd); free(ro); free(rr); free(dtmp);
}

static void test_rmsnorm(const vd_backend *be) {
    /* hand-computed (python, double): x = 1 2 3 4, eps 1e-5: rstd = 1/sqrt(7.5 + 1e-5), the mean
     * of the squares (the sum would give 1/sqrt(30)); out = x rstd w */
    float x[8] = {1, 2, 3, 4, 0, 0, 0, 0}, w[4] = {0.5f, 1.0f, 2.0f, -1.0f}, out[8], rstd[2];
    be->rmsnorm_forward(out, rstd, x, w, 2, 4, 1e-5f);
    const double r = 0.3651481282381064;
    CHECK_CLOSE(rstd[0], r, 1e-6, 0.0, "rmsnorm: rstd of 1 2 3 4");
    const double want[4] = {0.5 * r, 2.0 * r, 6.0 * r, -4.0 * r};
    for (int c = 0; c < 4; c++) CHECK_CLOSE(out[c], want[c], 1e-6, 0.0, "rmsnorm: out of 1 2 3 4");
    /* a zero row: rstd = 1/sqrtf(eps), out exactly 0 */
    CHECK(rstd[1] == 1.0f / sqrtf(1e-5f), "rmsnorm: zero row rstd %.9g", rstd[1]);
    for (int c = 0; c < 4; c++) CHECK(out[4 + c] == 0.0f, "rmsnorm: zero row out[%d] = %g", c, out[4 + c]);

    test_rmsnorm_case(be, 6, 37, 1e-5f, 1.0f, 1);
    test_rmsnorm_case(be, 3, 64, 1e-6f, 3.0f, 2);
    test_rmsnorm_case(be, 4, 5, 1e-2f, 0.05f, 3);  /* eps comparable to mean x^2: eps must be inside */
    test_rmsnorm_case(be, 2, 4096, 1e-5f, 1.0f, 4); /* Llama width: forward only */
}

/* ================================= RoPE ================================= */

/* HF's default inv_freq (head_dim/2): 1 / theta^(2i/head_dim), rounded to float */
static void hf_inv_freq(float *inv_freq, int head_dim, double theta) {
    for (int i = 0; i < head_dim / 2; i++) inv_freq[i] = (float)(1.0 / pow(theta, 2.0 * i / head_dim));
}

/* In place in double; the angle is HF's fp32 product t * inv_freq[i], then exact cos / sin. */
static void ref_rope(double *x, const float *inv_freq, int B, int T, int NH, int hd, int stride, int inverse) {
    int half = hd / 2;
    for (int n = 0; n < B * T; n++)
        for (int h = 0; h < NH; h++)
            for (int i = 0; i < half; i++) {
                volatile float a = (float)(n % T) * inv_freq[i]; /* one fp32 rounding, as in HF */
                double c = cos((double)a), s = inverse ? -sin((double)a) : sin((double)a);
                double *xh = x + (size_t)n * stride + (size_t)h * hd;
                double x1 = xh[i], x2 = xh[i + half];
                xh[i] = x1 * c - x2 * s;
                xh[i + half] = x2 * c + x1 * s;
            }
}

static double rope_ref_loss(const double *x, double *tmp, const double *R, const float *inv_freq, int B, int T,
                            int NH, int hd, int stride) {
    size_t n = (size_t)B * T * stride;
    memcpy(tmp, x, sizeof(double) * n);
    ref_rope(tmp, inv_freq, B, T, NH, hd, stride, 0);
    double L = 0.0;
    for (size_t r = 0; r < (size_t)B * T; r++)
        for (int c = 0; c < NH * hd; c++) L += R[r * stride + c] * tmp[r * stride + c];
    return L;
}

static double rope_backend_loss(const vd_backend *be, const float *x, float *tmp, const float *R,
                                const float *inv_freq, int B, int T, int NH, int hd, int stride) {
    size_t n = (size_t)B * T * stride;
    memcpy(tmp, x, sizeof(float) * n);
    be->rope(tmp, inv_freq, NULL, B, T, NH, hd, stride, 0);
    double L = 0.0;
    for (size_t r = 0; r < (size_t)B * T; r++)
        for (int c = 0; c < NH * hd; c++) L += (double)R[r * stride + c] * tmp[r * stride + c];
    return L;
}

static void test_rope_case(const vd_backend *be, int B, int T, int NH, int hd, int stride, double theta,
                           int with_fd, uint64_t seed) {
    size_t rows = (size_t)B * T, n = rows * stride;
    int width = NH * hd;
    float *inv_freq = malloc(sizeof(float) * (hd / 2));
    hf_inv_freq(inv_freq, hd, theta);
    float *x0 = malloc(sizeof(float) * n), *x = malloc(sizeof(float) * n), *R = malloc(sizeof(float) * n);
    float *g = malloc(sizeof(float) * n), *ftmp = malloc(sizeof(float) * n);
    double *xd = malloc(sizeof(double) * n), *Rd = malloc(sizeof(double) * n), *dtmp = malloc(sizeof(double) * n);
    for (size_t i = 0; i < n; i++) { x0[i] = x[i] = 2.0f * urand(&seed); xd[i] = x0[i]; R[i] = urand(&seed); Rd[i] = R[i]; }
    char what[128];

    be->rope(x, inv_freq, NULL, B, T, NH, hd, stride, 0);
    memcpy(dtmp, xd, sizeof(double) * n);
    ref_rope(dtmp, inv_freq, B, T, NH, hd, stride, 0);
    snprintf(what, sizeof(what), "rope B %d T %d heads %d hd %d stride %d: vs double reference", B, T, NH, hd, stride);
    for (size_t r = 0; r < rows; r++) {
        for (int c = 0; c < width; c++) {
            size_t i = r * stride + c;
            CHECK_CLOSE(x[i], dtmp[i], 1e-6, 1e-6, what);
            e_rope_fwd = max_d(e_rope_fwd, fabs(x[i] - dtmp[i]));
        }
        for (int c = width; c < stride; c++)
            CHECK(x[r * stride + c] == x0[r * stride + c], "rope: padding [row %zu, col %d] changed", r, c);
    }
    /* inverse after forward: back to the input (rotation by a then by -a, same cos / sin) */
    be->rope(x, inv_freq, NULL, B, T, NH, hd, stride, 1);
    snprintf(what, sizeof(what), "rope B %d T %d: inverse(rope(x)) vs x", B, T);
    for (size_t i = 0; i < n; i++) {
        CHECK_CLOSE(x[i], x0[i], 0.0, 1e-6, what);
        e_rope_inv = max_d(e_rope_inv, fabs(x[i] - x0[i]));
    }

    if (with_fd) {
        /* dL/dx = rotation^T R = rope(R, inverse) */
        memcpy(g, R, sizeof(float) * n);
        be->rope(g, inv_freq, NULL, B, T, NH, hd, stride, 1);
        for (size_t r = 0; r < rows; r++)
            for (int c = 0; c < width; c++) {
                size_t i = r * stride + c;
                double keep = xd[i], h = 1e-3;
                xd[i] = keep + h;
                double lp = rope_ref_loss(xd, dtmp, Rd, inv_freq, B, T, NH, hd, stride);
                xd[i] = keep - h;
                double lm = rope_ref_loss(xd, dtmp, Rd, inv_freq, B, T, NH, hd, stride);
                xd[i] = keep;
                double fd = (lp - lm) / (2.0 * h);
                snprintf(what, sizeof(what), "rope backward [row %zu, col %d] vs finite difference", r, c);
                CHECK_CLOSE(g[i], fd, 1e-5, 1e-6, what);
                e_rope_fd = max_d(e_rope_fd, fabs(g[i] - fd));

                float kf = x0[i];
                const float hf = 1e-2f;
                x0[i] = kf + hf;
                double lpf = rope_backend_loss(be, x0, ftmp, R, inv_freq, B, T, NH, hd, stride);
                x0[i] = kf - hf;
                double lmf = rope_backend_loss(be, x0, ftmp, R, inv_freq, B, T, NH, hd, stride);
                x0[i] = kf;
                double ffd = (lpf - lmf) / (2.0 * hf);
                snprintf(what, sizeof(what), "rope backward [row %zu, col %d] vs float finite difference", r, c);
                CHECK_CLOSE(g[i], ffd, 2e-2, 2e-3, what);
                e_rope_ffd = max_d(e_rope_ffd, fabs(g[i] - ffd));
            }
    }
    free(inv_freq); free(x0); free(x); free(R); free(g); free(ftmp); free(xd); free(Rd); free(dtmp);
}

static void test_rope(const vd_backend *be) {
    /* hand-computed: head_dim 4, inv_freq (1, 0.01); position 1 rotates the pairs (x0, x2) by
     * 1 rad and (x1, x3) by 0.01 rad (rotate_half: i with i + head_dim/2, not 2i with 2i+1);
     * position 0 is the identity */
    float inv_freq[2] = {1.0f, 0.01f};
    float x[16] = {1, 2, 3, 4, 1, 0, 0, 0, 0, 1, 0, 0, 5, 6, 7, 8}; /* B 2, T 2: rows at t = 0, 1, 0, 1 */
    be->rope(x, inv_freq, NULL, 2, 2, 1, 4, 4, 0);
    const double c1 = 0.5403023058681398, s1 = 0.8414709848078965, c2 = 0.9999500004166653, s2 = 0.009999833334166664;
    const double want[16] = {1, 2, 3, 4, c1, 0, s1, 0, 0, 1, 0, 0, 5 * c1 - 7 * s1, 6 * c2 - 8 * s2,
                             7 * c1 + 5 * s1, 8 * c2 + 6 * s2};
    for (int i = 0; i < 16; i++) CHECK_CLOSE(x[i], want[i], 1e-6, 1e-7, "rope: hand-computed rotation");

    test_rope_case(be, 2, 7, 3, 8, 29, 10000.0, 1, 11);  /* padded rows, 3 heads: FD */
    test_rope_case(be, 1, 5, 2, 64, 160, 10000.0, 1, 12); /* head_dim 64, k-sized rows inside wider ones */
    /* positions to 4095 (Llama 3's theta): angles up to ~4e3 rad, where the fp32 product
     * differs from a double one by up to ~1e-4 rad, far above the 1e-6 tolerance */
    test_rope_case(be, 1, 4096, 2, 8, 19, 500000.0, 0, 13);
}

/* ================================ SwiGLU ================================ */

static double silu_d(double x) { return x / (1.0 + exp(-x)); }

static void test_swiglu(const vd_backend *be) {
    const size_t n = 1200;
    float *gate = malloc(sizeof(float) * n), *up = malloc(sizeof(float) * n), *R = malloc(sizeof(float) * n);
    float *out = malloc(sizeof(float) * n), *dg = malloc(sizeof(float) * n), *du = malloc(sizeof(float) * n);
    float *tmp = malloc(sizeof(float) * n);
    uint64_t seed = 21;
    for (size_t i = 0; i < n; i++) { gate[i] = 8.0f * urand(&seed); up[i] = 2.0f * urand(&seed); R[i] = urand(&seed); }
    /* the tails: exp(-g) overflows to inf for g < -88 (silu -> -0, no NaN), and tiny gates */
    const float special[] = {0.0f, 1e-4f, -1e-4f, 20.0f, -20.0f, 50.0f, -50.0f, 100.0f, -100.0f, 1000.0f, -1000.0f, 1.0f};
    for (size_t j = 0; j < sizeof(special) / sizeof(special[0]); j++) gate[j] = special[j];
    up[11] = 1.0f; R[11] = 1.0f;
    char what[128];

    be->swiglu_forward(out, gate, up, n);
    /* hand-computed: silu(1) = 1 / (1 + e^-1) */
    CHECK_CLOSE(out[11], 0.7310585786300049, 1e-6, 0.0, "swiglu: silu(1) * 1");
    for (size_t i = 0; i < n; i++) {
        double want = silu_d(gate[i]) * up[i];
        snprintf(what, sizeof(what), "swiglu forward [%zu] (gate %g) vs double reference", i, gate[i]);
        CHECK_CLOSE(out[i], want, 1e-6, 1e-7, what);
        e_swi_fwd = max_d(e_swi_fwd, fabs(out[i] - want) / (1e-7 + fabs(want)));
    }

    for (size_t i = 0; i < n; i++) dg[i] = du[i] = 1000.0f; /* written, not accumulated */
    be->swiglu_backward(dg, du, gate, up, R, n);
    /* hand-computed: silu'(1) = s (1 + 1 - s), s = 1 / (1 + e^-1) */
    CHECK_CLOSE(dg[11], 0.9276705118714869, 1e-6, 0.0, "swiglu: silu'(1)");
    /* L = sum R silu(gate) up is a sum of independent terms: its central difference in one
     * element is that term's; the double reference's, and the backend float forward's */
    for (size_t i = 0; i < n; i++) {
        CHECK(isfinite(dg[i]) && isfinite(du[i]), "swiglu backward [%zu] (gate %g) not finite", i, gate[i]);
        double g = gate[i], h = 1e-4 * (1.0 + fabs(g));
        double fdg = R[i] * up[i] * (silu_d(g + h) - silu_d(g - h)) / (2.0 * h);
        double u = up[i], hu = 1e-4;
        double fdu = R[i] * (silu_d(g) * (u + hu) - silu_d(g) * (u - hu)) / (2.0 * hu);
        snprintf(what, sizeof(what), "swiglu dgate [%zu] (gate %g) vs finite difference", i, gate[i]);
        CHECK_CLOSE(dg[i], fdg, 1e-4, 1e-6, what);
        snprintf(what, sizeof(what), "swiglu dup [%zu] (gate %g) vs finite difference", i, gate[i]);
        CHECK_CLOSE(du[i], fdu, 1e-5, 1e-6, what);
        e_swi_fd = max_d(e_swi_fd, max_d(fabs(dg[i] - fdg), fabs(du[i] - fdu)));
    }
    /* through the backend's float forward, summing all of L (a sample of ordinary gates) */
    for (size_t i = 12; i < n; i += 5) {
        const float h = 1e-2f;
        double L[2][2]; /* [gate or up][+h or -h] */
        for (int which = 0; which < 2; which++)
            for (int sgn = 0; sgn < 2; sgn++) {
                float *p = which == 0 ? gate : up, keep = p[i];
                p[i] = keep + (sgn == 0 ? h : -h);
                be->swiglu_forward(tmp, gate, up, n);
                p[i] = keep;
                double acc = 0.0;
                for (size_t k = 0; k < n; k++) acc += (double)R[k] * tmp[k];
                L[which][sgn] = acc;
            }
        double fdg = (L[0][0] - L[0][1]) / (2.0 * h), fdu = (L[1][0] - L[1][1]) / (2.0 * h);
        snprintf(what, sizeof(what), "swiglu dgate [%zu] vs float finite difference", i);
        CHECK_CLOSE(dg[i], fdg, 2e-2, 2e-3, what);
        snprintf(what, sizeof(what), "swiglu dup [%zu] vs float finite difference", i);
        CHECK_CLOSE(du[i], fdu, 2e-2, 2e-3, what);
        e_swi_ffd = max_d(e_swi_ffd, max_d(fabs(dg[i] - fdg), fabs(du[i] - fdu)));
    }
    free(gate); free(up); free(R); free(out); free(dg); free(du); free(tmp);
}

int main(void) {
    const vd_backend *be = vd_backend_cpu();
    CHECK(be->rmsnorm_forward && be->rmsnorm_backward && be->rope && be->swiglu_forward && be->swiglu_backward,
          "the CPU backend table lacks a Llama op");
    if (vd_test_failures) TEST_END();
    test_rmsnorm(be);
    test_rope(be);
    test_swiglu(be);
    printf("max errors: rmsnorm fwd rel %.3g, bwd vs FD %.3g (float FD %.3g); rope fwd %.3g, inverse %.3g, "
           "bwd vs FD %.3g (float FD %.3g); swiglu fwd rel %.3g, bwd vs FD %.3g (float FD %.3g)\n",
           e_rms_fwd, e_rms_fd, e_rms_ffd, e_rope_fwd, e_rope_inv, e_rope_fd, e_rope_ffd, e_swi_fwd, e_swi_fd,
           e_swi_ffd);
    TEST_END();
}
