/* test_model_grad.c: a full 2-layer GPT-2 with VeRA on all four linear layers against an
 * independent double-precision reference forward written here (plain loops): the loss must
 * match, and every lambda_b / lambda_d gradient from vd_gpt2_backward must match central
 * finite differences of the reference loss. Run for both input-gradient paths. */
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
    const vd_gpt2 *m;
    const vd_adapter *v;
    const int32_t *tok, *tgt;
    int B, T;
} ref_model;

static void ref_ln(double *out, const double *x, const float *w, const float *b, int N, int C, double eps) {
    for (int n = 0; n < N; n++) {
        double mean = 0, var = 0;
        for (int c = 0; c < C; c++) mean += x[n * C + c];
        mean /= C;
        for (int c = 0; c < C; c++) var += (x[n * C + c] - mean) * (x[n * C + c] - mean);
        var /= C;
        for (int c = 0; c < C; c++) out[n * C + c] = (x[n * C + c] - mean) / sqrt(var + eps) * w[c] + b[c];
    }
}

/* out = x W + bias, plus the VeRA term when module >= 0 (b, d read from the double params p) */
static void ref_linear(double *out, const double *x, const float *W, const float *bias, int N, int in, int outd,
                       const vd_adapter *v, int module, const double *p) {
    for (int n = 0; n < N; n++)
        for (int o = 0; o < outd; o++) {
            double s = bias[o];
            for (int i = 0; i < in; i++) s += x[n * in + i] * (double)W[i * outd + o];
            out[n * outd + o] = s;
        }
    if (module < 0) return;
    int r = v->opt.r;
    const float *A = vd_test_vera_A(v), *B = vd_test_vera_B(v);
    double *u = malloc(sizeof(double) * r);
    for (int n = 0; n < N; n++) {
        for (int k = 0; k < r; k++) {
            double s = 0;
            for (int i = 0; i < in; i++) s += (double)A[k * v->max_in + i] * x[n * in + i];
            u[k] = s * p[vd_test_off_d(v, module) + k];
        }
        for (int o = 0; o < outd; o++) {
            double z = 0;
            for (int k = 0; k < r; k++) z += (double)B[o * r + k] * u[k];
            out[n * outd + o] += p[vd_test_off_b(v, module) + o] * z;
        }
    }
    free(u);
}

static double ref_forward(const ref_model *rm, const double *p) {
    const vd_gpt2 *m = rm->m;
    const vd_gpt2_params *w = &m->params;
    int B = rm->B, T = rm->T, C = m->config.channels, NH = m->config.n_head, V = m->config.vocab_size;
    int L = m->config.n_layer, N = B * T, hs = C / NH;
    double eps = m->config.ln_eps;
    double *x = malloc(sizeof(double) * N * C), *h = malloc(sizeof(double) * N * C);
    double *qkv = malloc(sizeof(double) * N * 3 * C), *y = malloc(sizeof(double) * N * C);
    double *f = malloc(sizeof(double) * N * 4 * C), *a = malloc(sizeof(double) * N * C);
    double *att = malloc(sizeof(double) * T);
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) x[n * C + c] = (double)w->wte[rm->tok[n] * C + c] + w->wpe[(n % T) * C + c];
    for (int l = 0; l < L; l++) {
        ref_ln(h, x, w->ln1w + l * C, w->ln1b + l * C, N, C, eps);
        ref_linear(qkv, h, w->qkvw + (size_t)l * C * 3 * C, w->qkvb + l * 3 * C, N, C, 3 * C, rm->v,
                   rm->v->module_of[l * 4 + 0], p);
        for (int b = 0; b < B; b++)
            for (int hh = 0; hh < NH; hh++)
                for (int t = 0; t < T; t++) {
                    const double *q = qkv + (b * T + t) * 3 * C + hh * hs;
                    double mx = -1e300, sum = 0;
                    for (int t2 = 0; t2 <= t; t2++) {
                        const double *k = qkv + (b * T + t2) * 3 * C + C + hh * hs;
                        double s = 0;
                        for (int i = 0; i < hs; i++) s += q[i] * k[i];
                        att[t2] = s / sqrt((double)hs);
                        if (att[t2] > mx) mx = att[t2];
                    }
                    for (int t2 = 0; t2 <= t; t2++) { att[t2] = exp(att[t2] - mx); sum += att[t2]; }
                    for (int i = 0; i < hs; i++) {
                        double o = 0;
                        for (int t2 = 0; t2 <= t; t2++) o += att[t2] / sum * qkv[(b * T + t2) * 3 * C + 2 * C + hh * hs + i];
                        y[(b * T + t) * C + hh * hs + i] = o;
                    }
                }
        ref_linear(a, y, w->attprojw + (size_t)l * C * C, w->attprojb + l * C, N, C, C, rm->v, rm->v->module_of[l * 4 + 1], p);
        for (int i = 0; i < N * C; i++) x[i] += a[i];
        ref_ln(h, x, w->ln2w + l * C, w->ln2b + l * C, N, C, eps);
        ref_linear(f, h, w->fcw + (size_t)l * C * 4 * C, w->fcb + l * 4 * C, N, C, 4 * C, rm->v, rm->v->module_of[l * 4 + 2], p);
        for (int i = 0; i < N * 4 * C; i++) {
            double z = f[i];
            f[i] = 0.5 * z * (1.0 + tanh(sqrt(2.0 / 3.14159265358979323846) * (z + 0.044715 * z * z * z)));
        }
        ref_linear(a, f, w->fcprojw + (size_t)l * 4 * C * C, w->fcprojb + l * C, N, 4 * C, C, rm->v, rm->v->module_of[l * 4 + 3], p);
        for (int i = 0; i < N * C; i++) x[i] += a[i];
    }
    ref_ln(h, x, w->lnfw, w->lnfb, N, C, eps);
    double loss = 0;
    double *logit = malloc(sizeof(double) * V);
    for (int n = 0; n < N; n++) {
        double mx = -1e300, sum = 0;
        for (int vv = 0; vv < V; vv++) {
            double s = 0;
            for (int c = 0; c < C; c++) s += h[n * C + c] * (double)w->wte[vv * C + c];
            logit[vv] = s;
            if (s > mx) mx = s;
        }
        for (int vv = 0; vv < V; vv++) sum += exp(logit[vv] - mx);
        loss += log(sum) + mx - logit[rm->tgt[n]];
    }
    free(x); free(h); free(qkv); free(y); free(f); free(a); free(att); free(logit);
    return loss / N;
}

/* B*T rows: 12 (one chunk of the LM head) or 520 (VD_HEAD_CHUNK = 512 rows, then a partial chunk). */
static void run_case(vd_weff_policy policy, int B, int T) {
    const vd_backend *be = vd_backend_cpu();
    vd_gpt2_config mc = {8, 32, 2, 2, 16, 1e-5f};
    float *hp = malloc(sizeof(float) * vd_gpt2_num_params(&mc));
    vd_gpt2_init_random(&mc, hp, 11);
    for (size_t i = 0; i < vd_gpt2_num_params(&mc); i++) hp[i] *= 5.0f; /* a less linear regime */
    /* LayerNorm parameters away from 1/0 so their use is tested too */
    uint64_t seed = 5;
    vd_model mm; /* through the model seam; m is its GPT-2 */
    vd_model_init(&mm, be, &mc, hp);
    vd_gpt2 *m = mm.gpt2;
    for (int i = 0; i < mc.n_layer * mc.channels; i++) {
        m->params.ln1w[i] = 1.0f + 0.3f * (float)urand(&seed);
        m->params.ln2b[i] = 0.3f * (float)urand(&seed);
    }
    vd_gpt2_alloc_acts(m, B, T);
    vd_adapter v;
    vd_adapter_options vo = vd_test_vera_options(4, 0.1f, 1, 0xF /* all four */, 0.0f);
    vd_adapter_init(&v, be, &mm, &vo);
    vd_model_set_adapter(&mm, &v);
    vd_adapter_alloc_acts(&v, B * T, B * T, policy);
    for (size_t i = 0; i < v.n_trainable; i++) v.params[i] = (float)(0.5 * urand(&seed));
    vd_adapter_refresh(&v);
    int N = B * T, V = mc.vocab_size;
    int32_t *tok = malloc(sizeof(int32_t) * N), *tgt = malloc(sizeof(int32_t) * N);
    for (int i = 0; i < N; i++) { tok[i] = (int32_t)(vd_mix64(seed + (uint64_t)i) % 32); tgt[i] = (int32_t)(vd_mix64(seed * 3 + (uint64_t)i) % 32); }
    float dloss = 1.0f / (float)N;
    /* the head's gradient recomputed by the backward (dloss unknown to the forward) ... */
    vd_fwd_ctx ctx = {1, 0, 0, 0.0f};
    vd_adapter_zero_grads(&v);
    double loss_re = vd_gpt2_forward(m, tok, tgt, NULL, B, &ctx) / N;
    vd_gpt2_backward(m, dloss, &ctx);
    float *g_re = malloc(sizeof(float) * v.n_trainable);
    memcpy(g_re, v.grads, sizeof(float) * v.n_trainable);
    /* ... and taken by the forward, chunk by chunk (a training step): the same bits */
    ctx.dloss = dloss;
    vd_adapter_zero_grads(&v);
    double loss = vd_gpt2_forward(m, tok, tgt, NULL, B, &ctx) / N;
    vd_gpt2_backward(m, dloss, &ctx);
    CHECK(loss == loss_re, "loss %.17g with the head's gradient in the forward, %.17g recomputed", loss, loss_re);
    CHECK(memcmp(g_re, v.grads, sizeof(float) * v.n_trainable) == 0,
          "gradients differ between the fused head in the forward and its recompute in the backward");
    /* the full logits (a forward without targets) give the same loss to float rounding */
    vd_gpt2_forward(m, tok, NULL, NULL, B, &ctx);
    CHECK(m->logit_rows == N, "logit_rows %d after a forward without targets, want %d", m->logit_rows, N);
    double loss_full = 0.0;
    for (int n = 0; n < N; n++) {
        const float *l = m->logits + (size_t)n * V;
        double mx = l[0], sum = 0.0;
        for (int vv = 1; vv < V; vv++) mx = l[vv] > mx ? l[vv] : mx;
        for (int vv = 0; vv < V; vv++) sum += exp(l[vv] - mx);
        loss_full += log(sum) + mx - l[tgt[n]];
    }
    CHECK_CLOSE(loss, loss_full / N, 1e-6, 0, "chunked loss vs the full logits");
    /* and a training forward after that reuses the grown buffer */
    vd_adapter_zero_grads(&v);
    double loss_again = vd_gpt2_forward(m, tok, tgt, NULL, B, &ctx) / N;
    vd_gpt2_backward(m, dloss, &ctx);
    CHECK(loss_again == loss && memcmp(g_re, v.grads, sizeof(float) * v.n_trainable) == 0,
          "a rerun after the full-logits forward differs");
    free(g_re);

    double *p = malloc(sizeof(double) * v.n_trainable);
    for (size_t i = 0; i < v.n_trainable; i++) p[i] = v.params[i];
    ref_model rm = {m, &v, tok, tgt, B, T};
    double ref = ref_forward(&rm, p);
    CHECK_CLOSE(loss, ref, 1e-5, 0, "model loss vs double reference");
    const double h = 1e-5;
    int checked = 0;
    double max_rel = 0;
    for (size_t i = 0; i < v.n_trainable; i++) {
        double keep = p[i];
        p[i] = keep + h;
        double lp = ref_forward(&rm, p);
        p[i] = keep - h;
        double lm = ref_forward(&rm, p);
        p[i] = keep;
        double g = (lp - lm) / (2 * h);
        char what[64];
        snprintf(what, sizeof(what), "trainable[%zu] (weff policy %d)", i, (int)policy);
        CHECK_CLOSE(v.grads[i], g, 2e-3, 2e-6, what);
        double rel = fabs(v.grads[i] - g) / (fabs(g) + 1e-6);
        if (rel > max_rel) max_rel = rel;
        checked++;
    }
    printf("policy %d: %d gradients checked, loss %.8f (ref %.8f), max rel err %.2e\n", (int)policy, checked, loss, ref, max_rel);
    CHECK(checked == (int)(2 * (3 * 16 + 16 + 4 * 16 + 16 + 4 * 4)), "checked %d", checked);
    free(p);
    free(tok);
    free(tgt);
    vd_adapter_free(&v);
    vd_model_free(&mm);
    free(hp);
}

/* Subsets of the four kinds (c_attn = bit 0 .. mlp.c_proj = bit 3) against central finite
 * differences of the model's own fp32 loss: the inputs kept in one slot for all blocks (ln1,
 * ln2, fch_gelu) are rebuilt in the backward for a single kind per block, where a U formed from
 * another block's input would show. */
static void run_subset(vd_weff_policy policy, uint32_t mask) {
    const vd_backend *be = vd_backend_cpu();
    vd_gpt2_config mc = {8, 32, 2, 2, 16, 1e-5f};
    size_t np = vd_gpt2_num_params(&mc);
    float *hp = malloc(sizeof(float) * np);
    vd_gpt2_init_random(&mc, hp, 11);
    for (size_t i = 0; i < np; i++) hp[i] *= 5.0f;
    vd_model mm;
    vd_model_init(&mm, be, &mc, hp);
    int B = 2, T = 6, N = B * T;
    vd_gpt2_alloc_acts(mm.gpt2, B, T);
    vd_adapter v;
    vd_adapter_options vo = vd_test_vera_options(4, 0.1f, 1, mask, 0.0f);
    vd_adapter_init(&v, be, &mm, &vo);
    vd_model_set_adapter(&mm, &v);
    vd_adapter_alloc_acts(&v, N, N, policy);
    uint64_t seed = 9;
    for (size_t i = 0; i < v.n_trainable; i++) v.params[i] = (float)(0.5 * urand(&seed));
    vd_adapter_refresh(&v);
    int32_t tok[12], tgt[12];
    for (int i = 0; i < N; i++) { tok[i] = (int32_t)(vd_mix64(seed + (uint64_t)i) % 32); tgt[i] = (int32_t)(vd_mix64(seed * 7 + (uint64_t)i) % 32); }
    vd_fwd_ctx ctx = {1, 0, 0, 0.0f};
    vd_adapter_zero_grads(&v);
    vd_model_forward(&mm, tok, tgt, NULL, B, &ctx);
    vd_model_backward(&mm, 1.0f / (float)N, &ctx);
    float *g = malloc(sizeof(float) * v.n_trainable);
    memcpy(g, v.grads, sizeof(float) * v.n_trainable);
    const float h = 1e-3f;
    int nonzero = 0;
    for (size_t i = 0; i < v.n_trainable; i++) {
        float keep = v.params[i];
        v.params[i] = keep + h;
        vd_adapter_refresh(&v);
        double lp = vd_model_forward(&mm, tok, tgt, NULL, B, &ctx) / N;
        v.params[i] = keep - h;
        vd_adapter_refresh(&v);
        double lm = vd_model_forward(&mm, tok, tgt, NULL, B, &ctx) / N;
        v.params[i] = keep;
        double fd = (lp - lm) / (2.0 * (double)h);
        char what[80];
        snprintf(what, sizeof(what), "subset 0x%x trainable[%zu] (weff policy %d)", (unsigned)mask, i, (int)policy);
        CHECK_CLOSE(g[i], fd, 1e-2, 5e-4, what);
        nonzero += fabs(fd) > 1e-3;
    }
    CHECK(nonzero > (int)v.n_trainable / 2, "subset 0x%x: only %d of %zu gradients non-zero", (unsigned)mask, nonzero,
          v.n_trainable);
    printf("subset 0x%x, policy %d: %zu gradients checked (%d non-zero)\n", (unsigned)mask, (int)policy, v.n_trainable,
           nonzero);
    free(g);
    vd_adapter_free(&v);
    vd_model_free(&mm);
    free(hp);
}

int main(void) {
    for (uint32_t mask = 1; mask <= 8; mask <<= 1) { /* one kind at a time */
        run_subset(VD_WEFF_NEVER, mask);
        run_subset(VD_WEFF_ALWAYS, mask);
    }
    run_case(VD_WEFF_NEVER, 2, 6);
    run_case(VD_WEFF_ALWAYS, 2, 6);
    run_case(VD_WEFF_NEVER, 65, 8); /* 520 rows: two chunks of the LM head, the second partial */
    TEST_END();
}
