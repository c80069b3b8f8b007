/* test_llama_grad.c: the Llama family's backward against central finite differences of its own
 * forward, for every trainable b / d of a 2-layer model with grouped-query attention (4 heads,
 * 2 key/value heads), q/k/v/o and MLP biases, an untied head, llama3 RoPE scaling, and VeRA on
 * all seven projection types, on both input-gradient paths (merged and factored).
 * The forward is float, so the differences use a step of 1e-3 and a tolerance of 1% + 5e-4
 * (measured: 3e-4 at most): this catches a wrong or missing term anywhere in the chain. The exact comparison
 * with PyTorch autograd is tests/python/test_llama_conformance.py. */
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

static double urand(uint64_t *s) { return (double)(vd_mix64((*s)++) >> 11) / 9007199254740992.0 * 2.0 - 1.0; }

static double loss_of(vd_model *m, const int32_t *tok, const int32_t *tgt, int B, int T) {
    vd_fwd_ctx ctx = {1, 0, 0};
    return vd_model_forward(m, tok, tgt, NULL, B, &ctx) / (B * T);
}

/* mask: the adapted kinds (q k v o gate up down = bits 0..6). Subsets leave layers that share an
 * input (q, k, v; gate, up) partly unadapted and the one-slot inputs (xn1, xn2, act) rebuilt for
 * a single kind per block: a U formed from another block's input would show here. */
static void run_case(vd_weff_policy policy, uint32_t mask) {
    const vd_backend *be = vd_backend_cpu();
    vd_model_config mc = {.max_seq_len = 16, .vocab_size = 29, .n_layer = 2, .n_head = 4, .channels = 16,
                          .ln_eps = 1e-5f, .arch = VD_ARCH_LLAMA, .n_kv_head = 2, .head_dim = 6,
                          .intermediate = 20, .tied = 0, .qkv_bias = 1, .o_bias = 1, .mlp_bias = 1,
                          .rope_theta = 500.0f, .rope_type = VD_ROPE_LLAMA3, .rope_factor = 8.0f,
                          .rope_low_freq_factor = 1.0f, .rope_high_freq_factor = 4.0f, .rope_original_max_pos = 8};
    size_t np = vd_family_llama.num_params(&mc);
    float *hp = malloc(sizeof(float) * np);
    vd_llama_init_random(&mc, hp, 3);
    uint64_t seed = 17;
    /* larger weights than 0.02, non-trivial norms and biases: a less linear regime */
    for (size_t i = 0; i < np; i++) hp[i] = hp[i] * 4.0f + (hp[i] == 1.0f || hp[i] == 0.0f ? 0.3f * (float)urand(&seed) : 0.0f);
    vd_model mm;
    vd_model_init(&mm, be, &mc, hp);
    int B = 2, T = 5;
    vd_model_alloc_acts(&mm, B, T);
    vd_adapter v;
    vd_adapter_options vo = vd_test_vera_options(4, 0.1f, 1, mask, 0.0f);
    vd_adapter_init(&v, be, &mm, &vo);
    vd_model_set_adapter(&mm, &v);
    vd_adapter_alloc_acts(&v, B * T, B * T, policy);
    for (size_t i = 0; i < v.n_trainable; i++) v.params[i] = (float)(0.5 * urand(&seed));
    vd_adapter_refresh(&v);
    int32_t tok[10], tgt[10];
    for (int i = 0; i < B * T; i++) {
        tok[i] = (int32_t)(vd_mix64(seed + (uint64_t)i) % 29);
        tgt[i] = (int32_t)(vd_mix64(seed * 3 + (uint64_t)i) % 29);
    }
    vd_fwd_ctx ctx = {1, 0, 0};
    vd_adapter_zero_grads(&v);
    double loss = vd_model_forward(&mm, tok, tgt, NULL, B, &ctx) / (B * T);
    vd_model_backward(&mm, 1.0f / (float)(B * T), &ctx);
    float *g = malloc(sizeof(float) * v.n_trainable);
    for (size_t i = 0; i < v.n_trainable; i++) g[i] = v.grads[i];
    /* the head's gradient taken by the forward (a training step's ctx) equals its recompute */
    vd_fwd_ctx train_ctx = {1, 0, 0, 1.0f / (float)(B * T)};
    vd_adapter_zero_grads(&v);
    double loss_fused = vd_model_forward(&mm, tok, tgt, NULL, B, &train_ctx) / (B * T);
    vd_model_backward(&mm, train_ctx.dloss, &train_ctx);
    CHECK(loss_fused == loss && memcmp(g, v.grads, sizeof(float) * v.n_trainable) == 0,
          "the fused head in the forward differs from its recompute in the backward");

    const float h = 1e-3f;
    int checked = 0, nonzero = 0;
    double max_abs = 0;
    for (size_t i = 0; i < v.n_trainable; i++) {
        float keep = v.params[i];
        v.params[i] = keep + h;
        vd_adapter_refresh(&v);
        double lp = loss_of(&mm, tok, tgt, B, T);
        v.params[i] = keep - h;
        vd_adapter_refresh(&v);
        double lm = loss_of(&mm, tok, tgt, B, T);
        v.params[i] = keep;
        double fd = (lp - lm) / (2.0 * (double)h);
        char what[80];
        snprintf(what, sizeof(what), "trainable[%zu] (weff policy %d, mask 0x%x)", i, (int)policy, (unsigned)mask);
        CHECK_CLOSE(g[i], fd, 1e-2, 5e-4, what);
        if (fabs(g[i] - fd) > max_abs) max_abs = fabs(g[i] - fd);
        nonzero += fabs(fd) > 1e-3;
        checked++;
    }
    vd_adapter_refresh(&v);
    /* every kind adapted in both layers: sum of (out + r) over 14 modules */
    int expect = 2 * ((24 + 4) + 2 * (12 + 4) + (16 + 4) + 2 * (20 + 4) + (16 + 4));
    CHECK(mask != 0x7F || checked == expect, "checked %d, expected %d", checked, expect);
    CHECK(nonzero > checked / 2, "only %d of %d gradients are non-zero: the check would prove little", nonzero, checked);
    CHECK(isfinite(loss) && loss > 0.5, "loss %g", loss);
    printf("policy %d, mask 0x%02x: %d gradients checked (%d non-zero), loss %.6f, max |analytic - fd| %.2e\n", (int)policy,
           (unsigned)mask, checked, nonzero, loss, max_abs);
    free(g);
    vd_adapter_free(&v);
    vd_model_free(&mm);
    free(hp);
}

int main(void) {
    const uint32_t masks[] = {0x7F, 0x05 /* q, v */, 0x22 /* k, up */, 0x40 /* down */};
    for (size_t i = 0; i < sizeof(masks) / sizeof(masks[0]); i++) {
        run_case(VD_WEFF_NEVER, masks[i]);
        run_case(VD_WEFF_ALWAYS, masks[i]);
    }
    TEST_END();
}
