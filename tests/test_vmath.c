/* test_vmath.c: the CPU backend's vectorised elementwise math against double-precision
 * references written here (libm's exp / tanh in double, not the code under test):
 *   vd_vexpf   every 97th float bit pattern in [-87, 88] (about 350 000 values) within 2 ulp of
 *              exp in double; exact at 0; NaN in, NaN out (every sign and payload, sampled); the
 *              clamp ends -87 and 88 within 2 ulp and everything past them (inf too) exactly clamped;
 *   GELU       forward (tanh form, transformers' gelu_new) within 2e-7 (1 + 2|u|) relative + 1e-36 (1 + |x|) of
 *              0.5 x (1 + tanh u) in double over [-12, 12] and at the tails; backward against
 *              the derivative in double and against central differences of the double forward;
 *   xent       softmax cross-entropy on rows of a width that is not a multiple of the SIMD lanes
 *              (V = 50257, GPT-2's vocabulary; and V = 5): the loss within 1e-6 relative of a
 *              double log-sum-exp, probabilities within 1e-6 relative of exp of the same float
 *              differences l - max in double; 1 vs 3 threads bit for bit. */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../src/backend/cpu_vmath.h"
#include "test_util.h"
#include "vera/backend.h"
#include "vera/prng.h"

static float urand(uint64_t *s) { *s = vd_mix64(*s + 0x9E3779B97F4A7C15ULL); return (float)((double)(*s >> 11) / 9007199254740992.0 * 2.0 - 1.0); }
static double max_d(double a, double b) { return a > b ? a : b; }

/* the distance in float ulps (at the reference's magnitude) of got from want */
static double ulps(float got, double want) {
    int e;
    frexp(want, &e);
    double ulp = ldexp(1.0, e - 24);
    return fabs((double)got - want) / ulp;
}

static double g_exp_ulp, g_gelu_fwd, g_gelu_bwd, g_gelu_fd, g_xent_loss, g_xent_prob;

static void test_exp(void) {
    uint32_t lo, hi;
    float flo = -87.0f, fhi = 88.0f;
    memcpy(&lo, &flo, 4);
    memcpy(&hi, &fhi, 4);
    /* negative floats: bit patterns 0x80000000 .. lo; positive: 0 .. hi */
    for (int sign = 0; sign < 2; sign++) {
        uint32_t end = sign ? lo : hi, start = sign ? 0x80000000u : 0u;
        for (uint32_t b = start; b <= end && b >= start; b += 97) {
            float x;
            memcpy(&x, &b, 4);
            float got = vd_vexpf(x);
            double want = exp((double)x), u = ulps(got, want);
            if (u > 2.0) CHECK(0, "vd_vexpf(%.9g) = %.9g, exp = %.9g: %.2f ulp", x, got, want, u);
            g_exp_ulp = max_d(g_exp_ulp, u);
            if (end - b < 97) break;
        }
    }
    CHECK(vd_vexpf(0.0f) == 1.0f, "vd_vexpf(0) = %.9g", vd_vexpf(0.0f));
    CHECK(vd_vexpf(-0.0f) == 1.0f, "vd_vexpf(-0) = %.9g", vd_vexpf(-0.0f));
    /* NaN in, NaN out, for every sign and payload (quiet and signalling): every 97th pattern
     * of 0x7F800001 .. 0x7FFFFFFF and 0xFF800001 .. 0xFFFFFFFF, and the first and last */
    int nan_bad = 0;
    for (int sign = 0; sign < 2; sign++) {
        uint32_t first = sign ? 0xFF800001u : 0x7F800001u, last = sign ? 0xFFFFFFFFu : 0x7FFFFFFFu;
        for (uint64_t b = first;; b += 97) {
            uint32_t u = b < last ? (uint32_t)b : last;
            float x;
            memcpy(&x, &u, 4);
            if (!isnan(vd_vexpf(x)) && nan_bad++ < 5) CHECK(0, "vd_vexpf(NaN 0x%08x) = %g", u, vd_vexpf(x));
            if (u == last) break;
        }
    }
    CHECK(nan_bad == 0, "vd_vexpf: %d NaN inputs gave a number", nan_bad);
    /* the clamp ends: e^-87 and e^88 themselves within 2 ulp (finite, normal); everything past
     * them, infinities included, exactly the clamped value (documented in cpu_vmath.h) */
    float e_lo = vd_vexpf(-87.0f), e_hi = vd_vexpf(88.0f);
    CHECK(ulps(e_lo, exp(-87.0)) <= 2.0, "vd_vexpf(-87) = %.9g, exp = %.9g", e_lo, exp(-87.0));
    CHECK(ulps(e_hi, exp(88.0)) <= 2.0, "vd_vexpf(88) = %.9g, exp = %.9g", e_hi, exp(88.0));
    CHECK(isnormal(e_lo) && isfinite(e_hi), "vd_vexpf clamp ends %g, %g not normal", e_lo, e_hi);
    const float below[] = {nextafterf(-87.0f, -INFINITY), -88.0f, -104.0f, -1000.0f, -FLT_MAX, -INFINITY};
    const float above[] = {nextafterf(88.0f, INFINITY), 89.0f, 1000.0f, FLT_MAX, INFINITY};
    for (size_t i = 0; i < sizeof(below) / sizeof(below[0]); i++)
        CHECK(vd_vexpf(below[i]) == e_lo, "vd_vexpf(%.9g) = %.9g, not e^-87 = %.9g", below[i], vd_vexpf(below[i]), e_lo);
    for (size_t i = 0; i < sizeof(above) / sizeof(above[0]); i++)
        CHECK(vd_vexpf(above[i]) == e_hi, "vd_vexpf(%.9g) = %.9g, not e^88 = %.9g", above[i], vd_vexpf(above[i]), e_hi);
}

#define GELU_K 0.7978845608028654 /* sqrt(2/pi) */
/* 0.5 x (1 + tanh u) in double; for u < -0.5, where 1 + tanh u cancels (to 0 for u < -19), the
 * equal x (1 - tanh|u|) / 2 = x e^{-2|u|} / (1 + e^{-2|u|}), written with exp */
static double gelu_d(double x) {
    double u = GELU_K * (x + 0.044715 * x * x * x);
    if (u >= -0.5) return 0.5 * x * (1.0 + tanh(u));
    double e = exp(2.0 * u);
    return x * e / (1.0 + e);
}
static double gelu_u(double x) { return GELU_K * (x + 0.044715 * x * x * x); }
static double gelu_grad_d(double x) {
    double u = GELU_K * (x + 0.044715 * x * x * x), th = tanh(u);
    return 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * GELU_K * (1.0 + 3.0 * 0.044715 * x * x);
}

static void test_gelu(const vd_backend *be) {
    const size_t n = 24001 + 8;
    float *x = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * n), *g = malloc(sizeof(float) * n);
    float *dx = malloc(sizeof(float) * n);
    for (size_t i = 0; i < 24001; i++) x[i] = -12.0f + 24.0f * (float)i / 24000.0f;
    const float tails[8] = {0.0f, 1e-6f, -1e-6f, 30.0f, -30.0f, 1e4f, -1e4f, -5.5f};
    for (int j = 0; j < 8; j++) x[24001 + j] = tails[j];
    uint64_t seed = 7;
    for (size_t i = 0; i < n; i++) { g[i] = urand(&seed); dx[i] = 1000.0f; /* written, not accumulated */ }
    be->gelu_forward(y, x, n);
    be->gelu_backward(dx, x, g, n);
    char what[128];
    for (size_t i = 0; i < n; i++) {
        double want = gelu_d(x[i]);
        snprintf(what, sizeof(what), "gelu(%.9g) vs double reference", x[i]);
        /* float u carries a relative rounding of ~1e-7, which e^{-2u} turns into ~2|u| 1e-7 */
        /* absolute 1e-36 (1 + |x|): where e^{-2u} passes e^88 (x < -9.6) the clamp gives |x| e^-88 for ~0 */
        CHECK_CLOSE(y[i], want, 2e-7 * (1.0 + 2.0 * fabs(gelu_u(x[i]))), 1e-36 * (1.0 + fabs(x[i])), what);
        if (fabs(want) > 1e-30) g_gelu_fwd = max_d(g_gelu_fwd, fabs(y[i] - want) / fabs(want));
        double dwant = gelu_grad_d(x[i]) * g[i];
        snprintf(what, sizeof(what), "gelu'(%.9g) * g vs double derivative", x[i]);
        CHECK_CLOSE(dx[i], dwant, 1e-6, 1e-7, what);
        g_gelu_bwd = max_d(g_gelu_bwd, fabs(dx[i] - dwant));
        /* central differences of the double forward (independent of the derivative's formula) */
        double h = 1e-5 * (1.0 + fabs(x[i]));
        double fd = g[i] * (gelu_d((double)x[i] + h) - gelu_d((double)x[i] - h)) / (2.0 * h);
        snprintf(what, sizeof(what), "gelu'(%.9g) * g vs finite difference", x[i]);
        CHECK_CLOSE(dx[i], fd, 1e-5, 1e-6, what);
        g_gelu_fd = max_d(g_gelu_fd, fabs(dx[i] - fd));
    }
    free(x); free(y); free(g); free(dx);
}

static void test_xent_width(const vd_backend *be, int N, int V, float spread) {
    size_t nv = (size_t)N * V;
    float *logits = malloc(sizeof(float) * nv), *probs = malloc(sizeof(float) * nv), *p3 = malloc(sizeof(float) * nv);
    float *loss = malloc(sizeof(float) * N), *l3 = malloc(sizeof(float) * N);
    int32_t *tg = malloc(sizeof(int32_t) * N);
    uint64_t seed = 99 + (uint64_t)V;
    for (size_t i = 0; i < nv; i++) logits[i] = spread * urand(&seed);
    for (int n = 0; n < N; n++) tg[n] = (int32_t)((unsigned)(n * 7919 + 13) % (unsigned)V);
    tg[N - 1] = VD_TARGET_NONE;
    be->softmax_xent_forward(loss, probs, logits, tg, N, V);
    vd_backend_cpu_set_threads(3);
    be->softmax_xent_forward(l3, p3, logits, tg, N, V);
    vd_backend_cpu_set_threads(1);
    CHECK(memcmp(loss, l3, sizeof(float) * N) == 0 && memcmp(probs, p3, sizeof(float) * nv) == 0,
          "xent V %d: 3 threads vs 1 differ", V);
    char what[128];
    for (int n = 0; n < N; n++) {
        const float *l = logits + (size_t)n * V;
        double mx = -INFINITY, s = 0.0;
        for (int v = 0; v < V; v++) mx = l[v] > mx ? l[v] : mx;
        for (int v = 0; v < V; v++) s += exp((double)l[v] - mx);
        double want = tg[n] == VD_TARGET_NONE ? 0.0 : log(s) + mx - l[tg[n]];
        snprintf(what, sizeof(what), "xent V %d row %d: loss vs double log-sum-exp", V, n);
        CHECK_CLOSE(loss[n], want, 1e-6, 0.0, what);
        g_xent_loss = max_d(g_xent_loss, fabs(loss[n] - want) / (fabs(want) + 1e-30));
        for (int v = 0; v < V; v++) {
            /* the argument as the kernel forms it (a float difference); the rest in double */
            double pw = exp((double)(l[v] - (float)mx)) / s, pg = probs[(size_t)n * V + v];
            snprintf(what, sizeof(what), "xent V %d row %d: prob %d vs double", V, n, v);
            CHECK_CLOSE(pg, pw, 1e-6, 1e-38, what);
            g_xent_prob = max_d(g_xent_prob, fabs(pg - pw) / pw);
        }
    }
    free(logits); free(probs); free(p3); free(loss); free(l3); free(tg);
}

int main(void) {
    const vd_backend *be = vd_backend_cpu();
    vd_backend_cpu_set_threads(1);
    test_exp();
    test_gelu(be);
    test_xent_width(be, 6, 50257, 8.0f);
    test_xent_width(be, 9, 5, 30.0f);
    printf("max errors: vd_vexpf %.3g ulp; gelu fwd rel %.3g, bwd vs double derivative %.3g, vs FD %.3g; "
           "xent loss rel %.3g, probs rel %.3g\n",
           g_exp_ulp, g_gelu_fwd, g_gelu_bwd, g_gelu_fd, g_xent_loss, g_xent_prob);
    TEST_END();
}
