/* test_packing.c: masked targets and packed positions on the CPU backend, against references
 * that do not use them:
 *  - attention with pos (both CPU paths, grouped-query and GPT-2's fused layout): each packed
 *    example gives the same out and dq / dk / dv as the example run on its own (pos NULL);
 *    pos NULL and pos[t] = t are bit-identical (out, the saved state, the gradients); the
 *    backward with pos matches central finite
 *    differences of the float forward;
 *  - softmax_xent: a VD_TARGET_NONE row has loss 0 and a zero gradient row, the other rows are
 *    bit-identical to an unmasked call;
 *  - the model, GPT-2 and Llama with VeRA on every linear layer: the same examples packed (two
 *    rows, positions restarting, pads between) and unpacked (one example per row) give the same
 *    loss sum and the same gradient of every b / d within 1e-5; the masked loss equals the sum
 *    of the unmasked run's token losses at the targets kept.
 * The masked loss and gradients against transformers + PEFT (labels -100): tests/python/test_masked_loss.py. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"
#include "vera/adapter.h"
#include "test_adapter.h"
#include "vera/backend.h"
#include "vera/model.h"
#include "vera/prng.h"

static float urand(uint64_t *s) { *s = vd_mix64(*s + 0x9E3779B97F4A7C15ULL); return (float)((double)(*s >> 11) / 9007199254740992.0 * 2.0 - 1.0); }
static double max_d(double a, double b) { return a > b ? a : b; }

/* ================================ attention ================================ */

/* A packed layout: B rows of T tokens, row b holds examples of the lengths in len[b][] (0-ended),
 * summing to T. pos restarts at 0 at each example. */
#define MAXEX 8
typedef struct {
    int B, T;
    int len[2][MAXEX];
} packing;

static void packing_pos(const packing *p, int32_t *pos) {
    for (int b = 0; b < p->B; b++) {
        int t = 0;
        for (int e = 0; p->len[b][e]; e++)
            for (int i = 0; i < p->len[b][e]; i++) pos[b * p->T + t++] = i;
        vd_require(t == p->T);
    }
}

typedef struct { int NH, NKV, hs, fused; } attn_geom;

/* strides: separate q (NH*hs) and k, v (NKV*hs) buffers, or GPT-2's fused qkv (3C) */
static void geom_strides(const attn_geom *g, int *qs, int *kvs) {
    if (g->fused) *qs = *kvs = 3 * g->NH * g->hs;
    else { *qs = g->NH * g->hs; *kvs = g->NKV * g->hs; }
}

/* q, k, v views into one buffer per role (or the fused buffer) of rows rows */
typedef struct { float *q, *k, *v, *mem[3]; } qkv_bufs;

static void qkv_alloc(qkv_bufs *x, const attn_geom *g, int rows) {
    int qs, kvs;
    geom_strides(g, &qs, &kvs);
    memset(x, 0, sizeof(*x));
    if (g->fused) {
        x->mem[0] = calloc((size_t)rows * qs, sizeof(float));
        int C = g->NH * g->hs;
        x->q = x->mem[0];
        x->k = x->mem[0] + C;
        x->v = x->mem[0] + 2 * C;
    } else {
        x->mem[0] = calloc((size_t)rows * qs, sizeof(float));
        x->mem[1] = calloc((size_t)rows * kvs, sizeof(float));
        x->mem[2] = calloc((size_t)rows * kvs, sizeof(float));
        x->q = x->mem[0];
        x->k = x->mem[1];
        x->v = x->mem[2];
    }
}
static void qkv_free(qkv_bufs *x) { for (int j = 0; j < 3; j++) free(x->mem[j]); }

static double e_att_ex, e_att_fd;

/* One layout, one geometry, one CPU path: packed vs each example alone, and finite differences. */
static void attn_case(const packing *p, const attn_geom *g, int gemm, uint64_t seed) {
    const vd_backend *be = vd_backend_cpu();
    vd_cpu_attention_gemm_min_t = gemm ? 1 : 1 << 30;
    int B = p->B, T = p->T, NH = g->NH, hs = g->hs, OC = NH * hs, rows = B * T, qs, kvs;
    geom_strides(g, &qs, &kvs);
    int32_t *pos = malloc(sizeof(int32_t) * rows);
    packing_pos(p, pos);
    qkv_bufs in, din;
    qkv_alloc(&in, g, rows);
    qkv_alloc(&din, g, rows);
    for (int r = 0; r < rows; r++) {
        for (int c = 0; c < OC; c++) in.q[(size_t)r * qs + c] = urand(&seed);
        for (int c = 0; c < g->NKV * hs; c++) {
            in.k[(size_t)r * kvs + c] = urand(&seed);
            in.v[(size_t)r * kvs + c] = urand(&seed);
        }
    }
    float *out = malloc(sizeof(float) * rows * OC), *dout = malloc(sizeof(float) * rows * OC);
    vd_attn_shape sh = {B, T, NH, g->NKV, hs, qs, kvs, pos};
    size_t nsaved = be->attention_saved_floats(&sh); /* the backend's state for the backward */
    float *att = malloc(sizeof(float) * nsaved), *datt = malloc(sizeof(float) * B * NH * T * T);
    for (int i = 0; i < rows * OC; i++) dout[i] = urand(&seed);
    be->attention_forward(out, att, in.q, in.k, in.v, &sh);
    be->attention_backward(din.q, din.k, din.v, datt, dout, in.q, in.k, in.v, att, &sh);
    char what[160];

    /* each example alone: rows [t0, t0 + n) of row b, as a B = 1, T = n call without pos */
    for (int b = 0; b < B; b++) {
        int t0 = 0;
        for (int e = 0; p->len[b][e]; t0 += p->len[b][e], e++) {
            int n = p->len[b][e];
            qkv_bufs ex, dex;
            qkv_alloc(&ex, g, n);
            qkv_alloc(&dex, g, n);
            size_t r0 = (size_t)b * T + t0;
            memcpy(ex.mem[0], in.mem[0] + r0 * qs, sizeof(float) * n * qs);
            if (!g->fused) {
                memcpy(ex.mem[1], in.mem[1] + r0 * kvs, sizeof(float) * n * kvs);
                memcpy(ex.mem[2], in.mem[2] + r0 * kvs, sizeof(float) * n * kvs);
            }
            vd_attn_shape es = {1, n, NH, g->NKV, hs, qs, kvs, NULL};
            float *eo = malloc(sizeof(float) * n * OC), *ea = malloc(sizeof(float) * be->attention_saved_floats(&es));
            float *eda = malloc(sizeof(float) * NH * n * n);
            be->attention_forward(eo, ea, ex.q, ex.k, ex.v, &es);
            be->attention_backward(dex.q, dex.k, dex.v, eda, dout + r0 * OC, ex.q, ex.k, ex.v, ea, &es);
            double worst = 0.0;
            for (int i = 0; i < n * OC; i++) worst = max_d(worst, fabs(out[r0 * OC + i] - eo[i]));
            for (int t = 0; t < n; t++) {
                for (int c = 0; c < OC; c++)
                    worst = max_d(worst, fabs(din.q[(r0 + t) * qs + c] - dex.q[(size_t)t * qs + c]));
                for (int c = 0; c < g->NKV * hs; c++) {
                    worst = max_d(worst, fabs(din.k[(r0 + t) * kvs + c] - dex.k[(size_t)t * kvs + c]));
                    worst = max_d(worst, fabs(din.v[(r0 + t) * kvs + c] - dex.v[(size_t)t * kvs + c]));
                }
            }
            snprintf(what, sizeof(what), "attention %s NH %d NKV %d hs %d%s: row %d example %d (len %d) vs alone",
                     gemm ? "gemm" : "loops", NH, g->NKV, hs, g->fused ? " fused" : "", b, e, n);
            /* the loops visit the same keys in the same order: exact; BLAS adds the zeros */
            CHECK(worst <= (gemm ? 1e-5 : 0.0), "%s: max diff %g", what, worst);
            e_att_ex = max_d(e_att_ex, worst);
            qkv_free(&ex);
            qkv_free(&dex);
            free(eo);
            free(ea);
            free(eda);
        }
    }

    /* finite differences of L = sum dout * out through the float forward with pos: a few inputs */
    float *o2 = malloc(sizeof(float) * rows * OC), *a2 = malloc(sizeof(float) * nsaved);
    float *roles[3] = {in.q, in.k, in.v}, *groles[3] = {din.q, din.k, din.v};
    int width[3] = {OC, g->NKV * hs, g->NKV * hs}, stride[3] = {qs, kvs, kvs};
    for (int j = 0; j < 3; j++) {
        for (int probe = 0; probe < 12; probe++) {
            int r = (int)(vd_mix64(seed + 31 * probe + j) % (uint64_t)rows);
            int c = (int)(vd_mix64(seed + 77 * probe + j) % (uint64_t)width[j]);
            float *x = roles[j] + (size_t)r * stride[j] + c, keep = *x;
            const float h = 1e-2f;
            double L[2];
            for (int sgn = 0; sgn < 2; sgn++) {
                *x = keep + (sgn ? -h : h);
                be->attention_forward(o2, a2, in.q, in.k, in.v, &sh);
                L[sgn] = 0.0;
                for (int i = 0; i < rows * OC; i++) L[sgn] += (double)dout[i] * o2[i];
            }
            *x = keep;
            double fd = (L[0] - L[1]) / (2.0 * h), got = groles[j][(size_t)r * stride[j] + c];
            snprintf(what, sizeof(what), "attention with pos (%s): d%c[%d, %d] vs finite difference",
                     gemm ? "gemm" : "loops", "qkv"[j], r, c);
            CHECK_CLOSE(got, fd, 2e-2, 2e-3, what);
            e_att_fd = max_d(e_att_fd, fabs(got - fd));
        }
    }

    /* pos[t] = t is the unpacked case: bit-identical to pos NULL */
    for (int i = 0; i < rows; i++) pos[i] = i % T;
    float *o3 = malloc(sizeof(float) * rows * OC);
    be->attention_forward(o2, a2, in.q, in.k, in.v, &sh);
    vd_attn_shape sn = sh;
    sn.pos = NULL;
    be->attention_forward(o3, att, in.q, in.k, in.v, &sn);
    CHECK(!memcmp(o2, o3, sizeof(float) * rows * OC) && !memcmp(a2, att, sizeof(float) * nsaved),
          "attention (%s): pos[t] = t differs from pos NULL", gemm ? "gemm" : "loops");
    qkv_bufs d2;
    qkv_alloc(&d2, g, rows);
    be->attention_backward(din.q, din.k, din.v, datt, dout, in.q, in.k, in.v, att, &sn);
    be->attention_backward(d2.q, d2.k, d2.v, datt, dout, in.q, in.k, in.v, a2, &sh);
    int same = 1;
    for (int j = 0; j < (g->fused ? 1 : 3); j++)
        same &= !memcmp(din.mem[j], d2.mem[j], sizeof(float) * rows * (j ? kvs : qs));
    CHECK(same, "attention backward (%s): pos[t] = t differs from pos NULL", gemm ? "gemm" : "loops");
    qkv_free(&d2);
    free(o2);
    free(a2);
    free(o3);
    qkv_free(&in);
    qkv_free(&din);
    free(out);
    free(dout);
    free(att);
    free(datt);
    free(pos);
    vd_cpu_attention_gemm_min_t = 128;
}

static void test_attention(void) {
    packing p = {2, 16, {{3, 1, 5, 4, 3, 0}, {7, 9, 0}}};
    attn_geom geoms[] = {{4, 2, 6, 0}, {3, 3, 4, 1}, {4, 1, 8, 0}};
    for (int gi = 0; gi < 3; gi++)
        for (int gemm = 0; gemm < 2; gemm++) attn_case(&p, &geoms[gi], gemm, 100 + (uint64_t)gi);
    printf("attention with pos: max diff vs each example alone %.2e, max |analytic - fd| %.2e\n", e_att_ex, e_att_fd);
}

/* ============================== softmax_xent ============================== */

static void test_xent(void) {
    const vd_backend *be = vd_backend_cpu();
    enum { N = 6, V = 11 };
    uint64_t seed = 5;
    float logits[N * V], p1[N * V], p2[N * V], l1[N], l2[N], d1[N * V], d2[N * V];
    for (int i = 0; i < N * V; i++) logits[i] = 3.0f * urand(&seed);
    int32_t t_all[N] = {1, 4, 0, 10, 7, 3}, t_mask[N] = {1, VD_TARGET_NONE, 0, 10, VD_TARGET_NONE, 3};
    be->softmax_xent_forward(l1, p1, logits, t_all, N, V);
    be->softmax_xent_forward(l2, p2, logits, t_mask, N, V);
    be->softmax_xent_backward(d1, p1, t_all, 0.25f, N, V);
    be->softmax_xent_backward(d2, p2, t_mask, 0.25f, N, V);
    for (int n = 0; n < N; n++) {
        int masked = t_mask[n] == VD_TARGET_NONE;
        CHECK(masked ? l2[n] == 0.0f : l2[n] == l1[n], "xent row %d: loss %g (unmasked %g)", n, l2[n], l1[n]);
        CHECK(!memcmp(p1 + n * V, p2 + n * V, sizeof(float) * V), "xent row %d: probs differ", n);
        for (int v = 0; v < V; v++)
            CHECK(masked ? d2[n * V + v] == 0.0f : d2[n * V + v] == d1[n * V + v], "xent row %d: dlogits[%d] %g", n, v,
                  d2[n * V + v]);
    }
    /* in place, as the models call it: logits -> probs -> dlogits in one buffer */
    float buf[N * V];
    memcpy(buf, logits, sizeof(buf));
    be->softmax_xent_forward(l2, buf, buf, t_mask, N, V);
    be->softmax_xent_backward(buf, buf, t_mask, 0.25f, N, V);
    CHECK(!memcmp(buf, d2, sizeof(buf)), "xent in place differs");
}

/* ================================= model ================================= */

/* An example: n tokens (inputs[0..n-1], and its own next-token targets, VD_TARGET_NONE on the
 * masked prompt and on the last token, as H3's examples end). */
typedef struct { int n; int32_t tok[16], tgt[16]; } example;

#define PAD_TOKEN 0

static void make_examples(example *ex, int n_ex, const int *lens, int V, uint64_t seed) {
    for (int e = 0; e < n_ex; e++) {
        ex[e].n = lens[e];
        int prompt = lens[e] / 3; /* targets of the first third are masked (a prompt) */
        for (int i = 0; i < lens[e]; i++) ex[e].tok[i] = 1 + (int32_t)(vd_mix64(seed * 977 + (uint64_t)(e * 31 + i)) % (uint64_t)(V - 1));
        for (int i = 0; i < lens[e]; i++)
            ex[e].tgt[i] = i + 1 < lens[e] && i >= prompt ? ex[e].tok[i + 1] : VD_TARGET_NONE;
    }
}

/* rows of T: examples in order, each row filled greedily, the rest a pad run (pos restarts, no
 * target). layout[e] = row of example e. Returns the rows used. */
static int pack_rows(const example *ex, int n_ex, int T, int one_per_row, int32_t *tok, int32_t *tgt, int32_t *pos) {
    int row = 0, t = 0;
    for (int i = 0; i < 16 * T; i++) { tok[i] = PAD_TOKEN; tgt[i] = VD_TARGET_NONE; pos[i] = i % T; }
    for (int e = 0; e < n_ex; e++) {
        if (t + ex[e].n > T || (one_per_row && t > 0)) {
            for (int i = 0; t + i < T; i++) pos[row * T + t + i] = i; /* pad run restarts */
            row++;
            t = 0;
        }
        for (int i = 0; i < ex[e].n; i++) {
            tok[row * T + t + i] = ex[e].tok[i];
            tgt[row * T + t + i] = ex[e].tgt[i];
            pos[row * T + t + i] = i;
        }
        t += ex[e].n;
    }
    for (int i = 0; t + i < T; i++) pos[row * T + t + i] = i;
    return row + 1;
}

typedef struct {
    vd_model m;
    vd_adapter v;
} model_run;

static void model_setup(model_run *r, const vd_model_config *mc, const float *hp, int B, int T, uint32_t mask,
                        const float *vparams) {
    const vd_backend *be = vd_backend_cpu();
    vd_model_init(&r->m, be, mc, hp);
    vd_model_alloc_acts(&r->m, B, T);
    vd_adapter_options vo = vd_test_vera_options(4, 0.1f, 1, mask, 0.0f);
    vd_adapter_init(&r->v, be, &r->m, &vo);
    vd_model_set_adapter(&r->m, &r->v);
    vd_adapter_alloc_acts(&r->v, B * T, B * T, VD_WEFF_AUTO);
    if (vparams) memcpy(r->v.params, vparams, sizeof(float) * r->v.n_trainable);
    vd_adapter_refresh(&r->v);
}

static void model_free(model_run *r) {
    vd_adapter_free(&r->v);
    vd_model_free(&r->m);
}

static const float *model_losses(const vd_model *m) { return m->gpt2 ? m->gpt2->losses : m->llama->losses; }

static void model_case(const char *name, const vd_model_config *mc, const float *hp, uint32_t mask, int gemm) {
    vd_cpu_attention_gemm_min_t = gemm ? 1 : 1 << 30;
    enum { T = 16, NEX = 6 };
    const int lens[NEX] = {5, 7, 3, 9, 6, 4};
    example ex[NEX];
    make_examples(ex, NEX, lens, mc->vocab_size, 7);
    static int32_t ptok[16 * T], ptgt[16 * T], ppos[16 * T], utok[16 * T], utgt[16 * T], upos[16 * T];
    int pb = pack_rows(ex, NEX, T, 0, ptok, ptgt, ppos);
    int ub = pack_rows(ex, NEX, T, 1, utok, utgt, upos);
    CHECK(pb == 3 && ub == NEX, "%s: %d packed rows, %d unpacked", name, pb, ub);
    int n_targets = 0, n_check = 0;
    for (int i = 0; i < pb * T; i++) n_targets += ptgt[i] != VD_TARGET_NONE;
    for (int i = 0; i < ub * T; i++) n_check += utgt[i] != VD_TARGET_NONE;
    CHECK(n_targets == n_check && n_targets > 10, "%s: targets %d packed, %d unpacked", name, n_targets, n_check);

    model_run P, U;
    model_setup(&P, mc, hp, pb, T, mask, NULL);
    uint64_t seed = 99;
    float *vp = malloc(sizeof(float) * P.v.n_trainable);
    for (size_t i = 0; i < P.v.n_trainable; i++) vp[i] = 0.5f * urand(&seed);
    memcpy(P.v.params, vp, sizeof(float) * P.v.n_trainable);
    vd_adapter_refresh(&P.v);
    model_setup(&U, mc, hp, ub, T, mask, vp);
    vd_fwd_ctx ctx = {1, 0, 0};
    float dloss = (float)(1.0 / n_targets);
    vd_adapter_zero_grads(&P.v);
    double lp = vd_model_forward(&P.m, ptok, ptgt, ppos, pb, &ctx);
    vd_model_backward(&P.m, dloss, &ctx);
    vd_adapter_zero_grads(&U.v);
    double lu = vd_model_forward(&U.m, utok, utgt, NULL, ub, &ctx); /* one example per row: pos = t */
    vd_model_backward(&U.m, dloss, &ctx);
    CHECK(fabs(lp - lu) <= 1e-5 * fabs(lu), "%s: packed loss sum %.9g, unpacked %.9g", name, lp, lu);
    /* normwise: the largest difference against the largest gradient. The two runs differ in
     * rows per GEMM (3 packed, 6 unpacked), so every entry carries fp32 rounding of the whole
     * network, and entries near 0 carry the same absolute error as the large ones. */
    double dmax = 0.0, gmax = 0.0;
    for (size_t i = 0; i < P.v.n_trainable; i++) {
        double a = P.v.grads[i], b = U.v.grads[i];
        dmax = max_d(dmax, fabs(a - b));
        gmax = max_d(gmax, fabs(b));
    }
    double worst = dmax / gmax;
    CHECK(worst <= 1e-5, "%s: packed vs unpacked b/d gradients: max diff / max gradient %.3g", name, worst);
    CHECK(gmax > 1e-4, "%s: gradients are all ~0 (%g): the check would prove nothing", name, gmax);
    /* the control: the packed rows without their positions let examples see each other */
    double lnopos = vd_model_forward(&P.m, ptok, ptgt, NULL, pb, &ctx);
    CHECK(fabs(lnopos - lu) > 1e-3 * fabs(lu), "%s: packed rows without pos give the same loss (%.9g)", name, lnopos);

    /* the masked loss is the sum of the kept targets' token losses: an unmasked run (every target
     * the next token, so rows keep their tokens) gives each position's loss */
    static int32_t full[16 * T];
    for (int i = 0; i < ub * T; i++) full[i] = utok[(i + 1) % (ub * T)];
    int32_t *keep = utgt;
    double sum_masked = 0.0;
    vd_model_forward(&U.m, utok, full, NULL, ub, &ctx);
    const float *tl = model_losses(&U.m);
    for (int i = 0; i < ub * T; i++)
        if (keep[i] != VD_TARGET_NONE) {
            CHECK(full[i] == keep[i], "%s: target %d", name, i);
            sum_masked += tl[i];
        }
    CHECK(fabs(sum_masked - lu) <= 1e-5 * fabs(lu), "%s: masked loss %.9g, sum of kept token losses %.9g", name, lu,
          sum_masked);
    printf("%s (%s): %d targets, loss %.6f, packed vs unpacked: loss diff %.2e, max grad diff / max grad %.2e\n", name,
           gemm ? "gemm" : "loops", n_targets, lu / n_targets, fabs(lp - lu), worst);
    free(vp);
    model_free(&P);
    model_free(&U);
    vd_cpu_attention_gemm_min_t = 128;
}

static void test_models(void) {
    vd_model_config g = {.max_seq_len = 32, .vocab_size = 37, .n_layer = 2, .n_head = 2, .channels = 16,
                         .ln_eps = 1e-5f, .arch = VD_ARCH_GPT2};
    size_t ng = vd_family_gpt2.num_params(&g);
    float *hg = malloc(sizeof(float) * ng);
    vd_gpt2_init_random(&g, hg, 11);
    for (size_t i = 0; i < ng; i++) hg[i] *= 3.0f; /* a less linear regime than 0.02 weights */
    vd_model_config l = {.max_seq_len = 32, .vocab_size = 37, .n_layer = 2, .n_head = 4, .channels = 16,
                         .ln_eps = 1e-5f, .arch = VD_ARCH_LLAMA, .n_kv_head = 2, .head_dim = 6,
                         .intermediate = 20, .tied = 0, .qkv_bias = 1, .rope_theta = 500.0f,
                         .rope_type = VD_ROPE_DEFAULT};
    size_t nl = vd_family_llama.num_params(&l);
    float *hl = malloc(sizeof(float) * nl);
    vd_llama_init_random(&l, hl, 13);
    for (size_t i = 0; i < nl; i++) hl[i] *= 3.0f;
    for (int gemm = 0; gemm < 2; gemm++) {
        model_case("gpt2", &g, hg, 0xF, gemm);
        model_case("llama", &l, hl, 0x7F, gemm);
    }
    free(hg);
    free(hl);
}

int main(void) {
    test_xent();
    test_attention();
    test_models();
    TEST_END();
}
