/* test_adapter_grad.c: one adapted linear layer against an independent double-precision
 * reference: forward output, and the gradients of lambda_b, lambda_d and the input against
 * central finite differences of L = sum R * tanh(y). Every layer shape (so the A/B slicing),
 * both input-gradient paths (merged and factored) and dropout on/off are covered. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"
#include "vera/adapter.h"
#include "test_adapter.h"
#include "vera/backend.h"
#include "vera/model.h"
#include "vera/prng.h"

static double urand(uint64_t *s) { *s = vd_mix64(*s); return (double)(*s >> 11) / 9007199254740992.0 * 2.0 - 1.0; }

typedef struct {
    int N, in, out, r, max_in;
    const float *W, *bias, *A, *Bm;  /* A (r, max_in), Bm (max_out, r) */
    const double *mask;              /* (N, in) dropout scale per element, or NULL */
    const double *R;                 /* (N, out) */
} ref_layer;

/* y = x W + bias + b * (B[:out] (d * (A[:, :in] (mask * x)))); L = sum R * tanh(y) */
static double ref_loss(const ref_layer *p, const double *x, const double *b, const double *d, double *y_out) {
    double L = 0.0;
    double *u = calloc((size_t)p->r, sizeof(double));
    for (int n = 0; n < p->N; n++) {
        for (int k = 0; k < p->r; k++) {
            double s = 0.0;
            for (int i = 0; i < p->in; i++) {
                double xi = x[n * p->in + i] * (p->mask ? p->mask[n * p->in + i] : 1.0);
                s += (double)p->A[k * p->max_in + i] * xi;
            }
            u[k] = s * d[k];
        }
        for (int o = 0; o < p->out; o++) {
            double y = p->bias[o];
            for (int i = 0; i < p->in; i++) y += x[n * p->in + i] * (double)p->W[i * p->out + o];
            double z = 0.0;
            for (int k = 0; k < p->r; k++) z += (double)p->Bm[o * p->r + k] * u[k];
            y += b[o] * z;
            if (y_out) y_out[n * p->out + o] = y;
            L += p->R[n * p->out + o] * tanh(y);
        }
    }
    free(u);
    return L;
}

static double fd(const ref_layer *p, double *x, double *b, double *d, double *v) {
    const double h = 1e-5;
    double keep = *v;
    *v = keep + h;
    double lp = ref_loss(p, x, b, d, NULL);
    *v = keep - h;
    double lm = ref_loss(p, x, b, d, NULL);
    *v = keep;
    return (lp - lm) / (2 * h);
}

static void run_case(vd_weff_policy policy, float dropout) {
    const vd_backend *be = vd_backend_cpu();
    vd_gpt2_config mc = {16, 32, 1, 2, 8, 1e-5f};
    float *hp = malloc(sizeof(float) * vd_gpt2_num_params(&mc));
    vd_gpt2_init_random(&mc, hp, 7);
    /* larger base weights than GPT-2's 0.02 so tanh is nonlinear over the range */
    for (size_t i = 0; i < vd_gpt2_num_params(&mc); i++) hp[i] *= 20.0f;
    vd_model mm; /* through the model seam; m is its GPT-2 */
    vd_model_init(&mm, be, &mc, hp);
    vd_gpt2 *m = mm.gpt2;
    vd_adapter v;
    vd_adapter_options vo = vd_test_vera_options(4, 0.1f, 3, 0xF /* all four */, dropout);
    vd_adapter_init(&v, be, &mm, &vo);
    vd_model_set_adapter(&mm, &v);
    const int N = 5;
    vd_adapter_alloc_acts(&v, N, policy == VD_WEFF_ALWAYS ? 1 : 1000000, policy);
    uint64_t seed = 99;
    for (size_t i = 0; i < v.n_trainable; i++) v.params[i] = (float)urand(&seed);
    vd_adapter_refresh(&v);
    CHECK(v.max_in == 32 && v.max_out == 32, "max_in %d max_out %d", v.max_in, v.max_out);
    vd_fwd_ctx ctx = {1, 12345, 77};
    for (int32_t mod = 0; mod < v.n_modules; mod++) {
        vd_adapter_module *md = &v.modules[mod];
        int in = md->in, out = md->out;
        float *xf = malloc(sizeof(float) * N * in), *y = malloc(sizeof(float) * N * out);
        float *dout = malloc(sizeof(float) * N * out), *dinp = malloc(sizeof(float) * N * in);
        double *x = malloc(sizeof(double) * N * in), *R = malloc(sizeof(double) * N * out);
        double *yref = malloc(sizeof(double) * N * out), *mask = NULL;
        double *b = malloc(sizeof(double) * out), *d = malloc(sizeof(double) * vo.r);
        for (int i = 0; i < N * in; i++) { xf[i] = (float)urand(&seed); x[i] = xf[i]; }
        for (int i = 0; i < N * out; i++) R[i] = urand(&seed);
        for (int o = 0; o < out; o++) b[o] = v.params[vd_test_off_b(&v, mod) + o];
        for (int k = 0; k < vo.r; k++) d[k] = v.params[vd_test_off_d(&v, mod) + k];
        if (dropout > 0) {
            mask = malloc(sizeof(double) * N * in);
            uint64_t s = vd_adapter_dropout_seed(&ctx, mod);
            int dropped = 0;
            for (int n = 0; n < N; n++)
                for (int i = 0; i < in; i++) {
                    float u = vd_dropout_uniform(s, ctx.row0 + (uint64_t)n, (uint64_t)i);
                    mask[n * in + i] = u >= dropout ? 1.0 / (1.0 - dropout) : 0.0;
                    dropped += u < dropout;
                }
            CHECK(dropped > 0 && dropped < N * in, "dropout mask drops %d of %d", dropped, N * in);
        }
        const float *W = md->W0;
        const float *bias = md->kind == 0 ? m->params.qkvb
                          : md->kind == 1 ? m->params.attprojb
                          : md->kind == 2 ? m->params.fcb : m->params.fcprojb;
        ref_layer p = {N, in, out, vo.r, v.max_in, W, bias, vd_test_vera_A(&v), vd_test_vera_B(&v), mask, R};
        ref_loss(&p, x, b, d, yref);
        vd_linear_forward(&v, be, mod, y, xf, &mm.sites[md->site].W, bias, N, in, out, &ctx);
        for (int i = 0; i < N * out; i++) CHECK_CLOSE(y[i], yref[i], 1e-5, 1e-5, "forward y");
        for (int i = 0; i < N * out; i++) dout[i] = (float)(R[i] * (1.0 - tanh(yref[i]) * tanh(yref[i])));
        vd_adapter_zero_grads(&v);
        vd_linear_backward(&v, be, mod, dinp, dout, xf, &mm.sites[md->site].W, N, in, out, &ctx);
        char what[256];
        for (int o = 0; o < out; o++) {
            snprintf(what, sizeof(what), "%s dL/db[%d] (weff %d, dropout %.1f)", md->name, o, md->weff != NULL, dropout);
            CHECK_CLOSE(v.grads[vd_test_off_b(&v, mod) + o], fd(&p, x, b, d, &b[o]), 1e-3, 1e-5, what);
        }
        for (int k = 0; k < vo.r; k++) {
            snprintf(what, sizeof(what), "%s dL/dd[%d] (weff %d, dropout %.1f)", md->name, k, md->weff != NULL, dropout);
            CHECK_CLOSE(v.grads[vd_test_off_d(&v, mod) + k], fd(&p, x, b, d, &d[k]), 1e-3, 1e-5, what);
        }
        for (int i = 0; i < N * in; i++) {
            snprintf(what, sizeof(what), "%s dL/dx[%d] (weff %d, dropout %.1f)", md->name, i, md->weff != NULL, dropout);
            CHECK_CLOSE(dinp[i], fd(&p, x, b, d, &x[i]), 1e-3, 1e-5, what);
        }
        CHECK((policy == VD_WEFF_ALWAYS && dropout == 0) == (md->weff != NULL), "weff path chosen as asked");
        free(xf); free(y); free(dout); free(dinp); free(x); free(R); free(yref); free(mask); free(b); free(d);
    }
    vd_adapter_free(&v);
    vd_model_free(&mm);
    free(hp);
}

int main(void) {
    run_case(VD_WEFF_NEVER, 0.0f);
    run_case(VD_WEFF_ALWAYS, 0.0f);
    run_case(VD_WEFF_NEVER, 0.3f);
    run_case(VD_WEFF_ALWAYS, 0.3f); /* dropout forces the factored path */
    TEST_END();
}
