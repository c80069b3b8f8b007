/* test_vblora_grad.c: VB-LoRA layers against an independent double-precision reference (its own
 * top-k, softmax and composition, PEFT's layouts written out index by index): the forward
 * output, and central finite differences of L = sum over every adapted layer of
 * sum R * tanh(y) for every entry of the shared bank (its gradient sums over layers), every
 * logit of every layer (non-selected logits must get exactly 0) and every input. Also: topk
 * 1/2/3, dropout on/off, the merged and factored paths, bit-identical gradients for 1 and 2
 * threads, the init distributions, the optimizer groups, the tie rule, and the
 * one-line refusal of a layer whose width vector_length does not divide. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "test_adapter.h"
#include "test_util.h"
#include "vera/adapter.h"
#include "vera/backend.h"
#include "vera/model.h"
#include "vera/prng.h"

static double urand(uint64_t *s) { *s = vd_mix64(*s); return (double)(*s >> 11) / 9007199254740992.0 * 2.0 - 1.0; }

/* what the reference needs of one adapted layer, read from the adapter's tensor table */
typedef struct {
    char name[96];
    int in, out;
    size_t off_la, off_lb;  /* offsets of vblora_logits_A / _B in params */
} ref_module;

typedef struct {
    int N, r, L, nv, k, n_mod;
    const ref_module *mods;        /* shapes and offsets */
    const float *const *W;         /* (n_mod) base weights (in, out) */
    const float *const *bias;      /* (n_mod) */
    double *const *x;              /* (n_mod) inputs (N, in) */
    double *const *mask;           /* (n_mod) dropout scale (N, in) or NULL */
    double *const *R;              /* (n_mod) (N, out) */
} ref_net;

/* one sub-vector: out[l * sl] = sum_j softmax(top-k of logits)_j bank[idx_j, l] */
static void ref_subvector(double *out, int sl, const double *logits, const double *bank, int L, int nv, int k) {
    int idx[8];
    for (int j = 0; j < k; j++) { /* selection sort, strict >: ties keep the lower index */
        int best = -1;
        for (int c = 0; c < nv; c++) {
            int used = 0;
            for (int m = 0; m < j; m++) used |= idx[m] == c;
            if (!used && (best < 0 || logits[c] > logits[best])) best = c;
        }
        idx[j] = best;
    }
    double mx = logits[idx[0]], z = 0.0, w[8];
    for (int j = 0; j < k; j++) z += exp(logits[idx[j]] - mx);
    for (int j = 0; j < k; j++) w[j] = exp(logits[idx[j]] - mx) / z;
    for (int l = 0; l < L; l++) {
        double s = 0.0;
        for (int j = 0; j < k; j++) s += w[j] * bank[(size_t)idx[j] * L + l];
        out[(size_t)l * sl] = s;
    }
}

/* params in the adapter's layout (bank first); y_out (optional) per module */
static double ref_loss(const ref_net *p, const double *params, double *const *y_out) {
    double loss = 0.0;
    const int r = p->r, L = p->L, nv = p->nv;
    for (int mi = 0; mi < p->n_mod; mi++) {
        const ref_module *md = &p->mods[mi];
        int in = md->in, out = md->out;
        double *A = malloc(sizeof(double) * (size_t)r * in), *B = malloc(sizeof(double) * (size_t)out * r);
        /* A (r, in): logits_A (r, in/L, nv), sub-vector (i, t) at A[i, t*L + l] */
        for (int i = 0; i < r; i++)
            for (int t = 0; t < in / L; t++)
                ref_subvector(A + (size_t)i * in + (size_t)t * L, 1,
                              params + md->off_la + ((size_t)i * (in / L) + t) * nv, params, L, nv, p->k);
        /* B (out, r): logits_B (out/L, r, nv), sub-vector (t, j) at B[t*L + l, j] */
        for (int t = 0; t < out / L; t++)
            for (int j = 0; j < r; j++)
                ref_subvector(B + (size_t)t * L * r + j, r, params + md->off_lb + ((size_t)t * r + j) * nv, params, L,
                              nv, p->k);
        const double *x = p->x[mi];
        for (int n = 0; n < p->N; n++) {
            double u[16];
            for (int i = 0; i < r; i++) {
                double s = 0.0;
                for (int c = 0; c < in; c++)
                    s += x[(size_t)n * in + c] * (p->mask[mi] ? p->mask[mi][(size_t)n * in + c] : 1.0) * A[(size_t)i * in + c];
                u[i] = s;
            }
            for (int o = 0; o < out; o++) {
                double y = p->bias[mi][o];
                for (int c = 0; c < in; c++) y += x[(size_t)n * in + c] * (double)p->W[mi][(size_t)c * out + o];
                for (int i = 0; i < r; i++) y += u[i] * B[(size_t)o * r + i];
                if (y_out) y_out[mi][(size_t)n * out + o] = y;
                loss += p->R[mi][(size_t)n * out + o] * tanh(y);
            }
        }
        free(A);
        free(B);
    }
    return loss;
}

static double fd(const ref_net *p, double *params, double *v) {
    const double h = 1e-6;
    double keep = *v;
    *v = keep + h;
    double lp = ref_loss(p, params, NULL);
    *v = keep - h;
    double lm = ref_loss(p, params, NULL);
    *v = keep;
    return (lp - lm) / (2 * h);
}

/* the model hands vd_linear_* its frozen weight as a tensor: an fp32 (in, out) view of W */
static vd_tensor f32_weight(const float *W, int in, int out) {
    vd_tensor t = {(void *)W, VD_DTYPE_F32, 2, {in, out, 0, 0}};
    return t;
}

/* forward + backward of every module; returns a host copy of the gradient buffer */
static float *run_backward(vd_adapter *a, float *const *xf, float *const *y, float *const *dout, float *const *dinp,
                           const float *const *W, const float *const *bias, int N, const vd_fwd_ctx *ctx) {
    vd_adapter_zero_grads(a);
    for (int mi = 0; mi < a->n_modules; mi++) {
        const vd_adapter_module *md = &a->modules[mi];
        vd_tensor wt = f32_weight(W[mi], md->in, md->out);
        vd_linear_forward(a, a->be, mi, y[mi], xf[mi], &wt, bias[mi], N, md->in, md->out, ctx);
    }
    for (int mi = a->n_modules - 1; mi >= 0; mi--) { /* the model's order: last layer first */
        const vd_adapter_module *md = &a->modules[mi];
        vd_tensor wt = f32_weight(W[mi], md->in, md->out);
        vd_linear_backward(a, a->be, mi, dinp[mi], dout[mi], xf[mi], &wt, N, md->in, md->out, ctx);
    }
    float *g = malloc(sizeof(float) * a->n_reduce);
    memcpy(g, a->grads, sizeof(float) * a->n_reduce);
    return g;
}

static void run_case(int topk, float dropout, vd_weff_policy policy) {
    const vd_backend *be = vd_backend_cpu();
    vd_gpt2_config mc = {16, 32, 1, 2, 16, 1e-5f}; /* C 16: layers 16x48, 16x16, 16x64, 64x16 */
    float *hp = malloc(sizeof(float) * vd_gpt2_num_params(&mc));
    vd_gpt2_init_random(&mc, hp, 7);
    for (size_t i = 0; i < vd_gpt2_num_params(&mc); i++) hp[i] *= 20.0f; /* tanh nonlinear over the range */
    vd_model mm;
    vd_model_init(&mm, be, &mc, hp);
    vd_gpt2 *m = mm.gpt2;
    vd_adapter_options vo = vd_test_vblora_options(4, 6, 8, topk, 0.5f, 1.0f, dropout);
    vd_adapter v;
    vd_adapter_init(&v, be, &mm, &vo);
    const int N = 3, nm = v.n_modules;
    vd_adapter_alloc_acts(&v, N, N, policy);
    for (int mi = 0; mi < nm; mi++)
        CHECK((v.modules[mi].weff != NULL) == (policy == VD_WEFF_ALWAYS && dropout == 0.0f), "merged weight as asked");
    /* the table: the bank first in its own group (lr_vector_bank), then every layer's logits (lr) */
    int32_t tb = vd_adapter_find_tensor(&v, "base_model.vblora_vector_bank");
    size_t n_bank = (size_t)vo.num_vectors * vo.vector_length;
    CHECK(nm == 4 && tb == 0 && v.tensors[0].offset == 0 && v.tensors[0].numel == n_bank && v.tensors[0].module == -1,
          "modules %d, bank tensor %d", nm, tb);
    CHECK(v.n_groups == 2 && v.groups[0].offset == 0 && v.groups[0].count == n_bank && v.groups[0].lr == 1e-3f &&
          v.groups[1].offset == n_bank && v.groups[1].count == v.n_trainable - n_bank && v.groups[1].lr == 1e-2f,
          "optimizer groups: bank at lr_vector_bank, logits at lr");
    ref_module mods[4];
    size_t want = n_bank;
    for (int mi = 0; mi < nm; mi++) {
        const vd_adapter_module *md = &v.modules[mi];
        ref_module *rm = &mods[mi];
        snprintf(rm->name, sizeof(rm->name), "%s", md->name);
        rm->in = md->in;
        rm->out = md->out;
        char key[192];
        snprintf(key, sizeof(key), "base_model.model.%s.vblora_logits_A", md->name);
        int32_t ta = vd_adapter_find_tensor(&v, key);
        snprintf(key, sizeof(key), "base_model.model.%s.vblora_logits_B", md->name);
        int32_t tbb = vd_adapter_find_tensor(&v, key);
        CHECK(ta > 0 && tbb > 0, "%s: logits tensors in the table", md->name);
        if (ta <= 0 || tbb <= 0) return;
        const vd_adapter_tensor *A = &v.tensors[ta], *B = &v.tensors[tbb];
        CHECK(A->ndim == 3 && A->shape[0] == vo.r && A->shape[1] == md->in / vo.vector_length &&
              A->shape[2] == vo.num_vectors, "%s: vblora_logits_A is (r, in/L, num_vectors)", md->name);
        CHECK(B->ndim == 3 && B->shape[0] == md->out / vo.vector_length && B->shape[1] == vo.r &&
              B->shape[2] == vo.num_vectors, "%s: vblora_logits_B is (out/L, r, num_vectors)", md->name);
        rm->off_la = A->offset;
        rm->off_lb = B->offset;
        want += (size_t)vo.r * (md->in + md->out) / vo.vector_length * vo.num_vectors;
    }
    CHECK(v.n_trainable == want && v.n_reduce == want + 2, "n_trainable %zu want %zu", v.n_trainable, want);
    /* PEFT's init distributions: bank uniform in (-bound, bound), logits normal(0, std) */
    double bmax = 0.0, lsum = 0.0, lsq = 0.0;
    for (size_t i = 0; i < n_bank; i++) bmax = fmax(bmax, fabs(v.params[i]));
    for (size_t i = n_bank; i < v.n_trainable; i++) { lsum += v.params[i]; lsq += (double)v.params[i] * v.params[i]; }
    double nl = (double)(v.n_trainable - n_bank), lmean = lsum / nl, lstd = sqrt(lsq / nl - lmean * lmean);
    CHECK(bmax <= 0.5 && bmax > 0.4, "bank init within the bound 0.5, max |x| %g", bmax);
    CHECK(fabs(lmean) < 0.1 && fabs(lstd - 1.0) < 0.1, "logits init mean %g std %g (want 0, 1)", lmean, lstd);
    /* logits spread wide so a finite-difference step never changes the top-k selection */
    uint64_t seed = 99 + (uint64_t)topk;
    for (size_t i = 0; i < n_bank; i++) v.params[i] = (float)urand(&seed);
    for (size_t i = n_bank; i < v.n_trainable; i++) v.params[i] = (float)(2.0 * urand(&seed));
    vd_adapter_refresh(&v);
    vd_fwd_ctx ctx = {1, 12345, 77};

    float *xf[4], *y[4], *dout[4], *dinp[4];
    double *x[4], *R[4], *yref[4], *mask[4];
    const float *W[4], *bias[4];
    for (int mi = 0; mi < nm; mi++) {
        const vd_adapter_module *md = &v.modules[mi];
        int in = md->in, out = md->out;
        xf[mi] = malloc(sizeof(float) * N * in);
        y[mi] = malloc(sizeof(float) * N * out);
        dout[mi] = malloc(sizeof(float) * N * out);
        dinp[mi] = malloc(sizeof(float) * N * in);
        x[mi] = malloc(sizeof(double) * N * in);
        R[mi] = malloc(sizeof(double) * N * out);
        yref[mi] = malloc(sizeof(double) * N * out);
        mask[mi] = NULL;
        for (int i = 0; i < N * in; i++) { xf[mi][i] = (float)urand(&seed); x[mi][i] = xf[mi][i]; }
        for (int i = 0; i < N * out; i++) R[mi][i] = urand(&seed);
        W[mi] = md->W0;
        bias[mi] = md->kind == 0 ? m->params.qkvb : md->kind == 1 ? m->params.attprojb
                 : md->kind == 2 ? m->params.fcb : m->params.fcprojb;
        if (dropout > 0) {
            mask[mi] = malloc(sizeof(double) * N * in);
            uint64_t s = vd_adapter_dropout_seed(&ctx, mi);
            for (int n = 0; n < N; n++)
                for (int i = 0; i < in; i++)
                    mask[mi][n * in + i] =
                        vd_dropout_uniform(s, ctx.row0 + (uint64_t)n, (uint64_t)i) >= dropout ? 1.0 / (1.0 - dropout) : 0.0;
        }
    }
    double *params = malloc(sizeof(double) * v.n_trainable);
    for (size_t i = 0; i < v.n_trainable; i++) params[i] = v.params[i];
    ref_net p = {N, vo.r, vo.vector_length, vo.num_vectors, topk, nm, mods, W, bias, x, mask, R};
    ref_loss(&p, params, yref);
    for (int mi = 0; mi < nm; mi++) {
        const vd_adapter_module *md = &v.modules[mi];
        vd_tensor wt = f32_weight(W[mi], md->in, md->out);
        vd_linear_forward(&v, be, mi, y[mi], xf[mi], &wt, bias[mi], N, md->in, md->out, &ctx);
        for (int i = 0; i < N * md->out; i++) CHECK_CLOSE(y[mi][i], yref[mi][i], 1e-5, 1e-5, "forward y");
        for (int i = 0; i < N * md->out; i++)
            dout[mi][i] = (float)(R[mi][i] * (1.0 - tanh(yref[mi][i]) * tanh(yref[mi][i])));
    }
    vd_backend_cpu_set_threads(1);
    float *g1 = run_backward(&v, xf, y, dout, dinp, W, bias, N, &ctx);
    vd_backend_cpu_set_threads(2);
    float *g2 = run_backward(&v, xf, y, dout, dinp, W, bias, N, &ctx);
    CHECK(memcmp(g1, g2, sizeof(float) * v.n_reduce) == 0, "gradients bit-identical for 1 and 2 threads (topk %d)", topk);

    char what[160];
    int zeros = 0, nonzero_logits = 0;
    for (size_t i = 0; i < v.n_trainable; i++) {
        double want_g = fd(&p, params, &params[i]);
        snprintf(what, sizeof(what), "dL/dparam[%zu] (%s, topk %d, dropout %.1f)", i, i < n_bank ? "bank" : "logit", topk,
                 (double)dropout);
        CHECK_CLOSE(g1[i], want_g, 1e-4, 1e-5, what);
        if (i >= n_bank) {
            zeros += g1[i] == 0.0f;
            nonzero_logits += g1[i] != 0.0f;
        }
    }
    /* exactly topk of every row of num_vectors logits have a gradient (the rest exactly 0) */
    size_t rows = (v.n_trainable - n_bank) / (size_t)vo.num_vectors;
    /* (top-1: the softmax of one value is the constant 1, so no logit gets a gradient, as in PEFT) */
    size_t live = topk == 1 ? 0 : rows * (size_t)topk;
    CHECK((size_t)nonzero_logits <= live && (size_t)nonzero_logits >= live * 9 / 10,
          "logits with a gradient: %d of %zu rows x topk %d", nonzero_logits, rows, topk);
    CHECK(zeros >= (int)(rows * (size_t)(vo.num_vectors - topk)), "unselected logits get 0 (%d)", zeros);
    for (int mi = 0; mi < nm; mi++) {
        const vd_adapter_module *md = &v.modules[mi];
        for (int i = 0; i < N * md->in; i++) {
            snprintf(what, sizeof(what), "%s dL/dx[%d] (topk %d, dropout %.1f)", md->name, i, topk, (double)dropout);
            CHECK_CLOSE(dinp[mi][i], fd(&p, params, &x[mi][i]), 1e-4, 1e-5, what);
        }
    }
    for (int mi = 0; mi < nm; mi++) {
        free(xf[mi]); free(y[mi]); free(dout[mi]); free(dinp[mi]); free(x[mi]); free(R[mi]); free(yref[mi]); free(mask[mi]);
    }
    free(g1);
    free(g2);
    free(params);
    vd_adapter_free(&v);
    vd_model_free(&mm);
    free(hp);
}

static void test_ties(void) {
    const vd_backend *be = vd_backend_cpu();
    const float logits[7] = {1.0f, 3.0f, 1.0f, 3.0f, 1.0f, 0.5f, 3.0f};
    int32_t idx[3];
    float w[3];
    be->vblora_topk(idx, w, logits, 1, 7, 3);
    CHECK(idx[0] == 1 && idx[1] == 3 && idx[2] == 6, "ties: lower index first, got %d %d %d", idx[0], idx[1], idx[2]);
    CHECK(w[0] == w[1] && w[1] == w[2] && fabsf(w[0] - 1.0f / 3.0f) < 1e-7f, "equal weights %g", (double)w[0]);
    /* PEFT's save_only_topk_weights load: -inf everywhere but the kept entries */
    const float ninf[5] = {-INFINITY, logf(0.25f), -INFINITY, logf(0.75f), -INFINITY};
    be->vblora_topk(idx, w, ninf, 1, 5, 2);
    CHECK(idx[0] == 3 && idx[1] == 1 && fabsf(w[0] - 0.75f) < 1e-7f && fabsf(w[1] - 0.25f) < 1e-7f,
          "top-k of a top-k-only load: %d %d %g %g", idx[0], idx[1], (double)w[0], (double)w[1]);
}

/* vd_adapter_init of VB-LoRA options (arg) on a 1-layer GPT-2 of width 16: dies on bad options */
static void init_vblora(void *arg) {
    const vd_backend *be = vd_backend_cpu();
    vd_gpt2_config mc = {16, 32, 1, 2, 16, 1e-5f};
    float *hp = calloc(vd_gpt2_num_params(&mc), sizeof(float));
    vd_model mm;
    vd_model_init(&mm, be, &mc, hp);
    vd_adapter v;
    vd_adapter_init(&v, be, &mm, (const vd_adapter_options *)arg);
}

int main(void) {
    test_ties();
    run_case(2, 0.0f, VD_WEFF_NEVER);
    run_case(1, 0.0f, VD_WEFF_NEVER);
    run_case(3, 0.0f, VD_WEFF_NEVER);
    run_case(2, 0.3f, VD_WEFF_NEVER);
    run_case(2, 0.0f, VD_WEFF_ALWAYS); /* the merged weight W0 + A^T B^T in forward and backward */
    run_case(3, 0.3f, VD_WEFF_ALWAYS); /* dropout keeps the factored path */
    vd_adapter_options bad_width = vd_test_vblora_options(4, 6, 32, 2, 0.02f, 0.1f, 0.0f); /* 16 % 32 != 0 */
    vd_adapter_options bad_topk = vd_test_vblora_options(4, 6, 8, 7, 0.02f, 0.1f, 0.0f);
    CHECK(vd_expect_die(init_vblora, &bad_width, "layer transformer.h.0.attn.c_attn: in_features 16 is not divisible by vector_length 32"),
          "a layer vector_length does not divide is refused by name");
    CHECK(vd_expect_die(init_vblora, &bad_topk, "topk must be in 1..num_vectors (6), got 7"), "topk > num_vectors refused");
    TEST_END();
}
