/* test_decode.c: generation's KV-cache decode (vd_model_decode) against the full forward of the
 * same sequence (vd_model_forward), for GPT-2 and the Llama family (grouped-query attention,
 * biases, untied head, llama3 RoPE scaling), each with a VeRA adapter with non-zero vectors on
 * every linear layer and without one. The prompt goes through in one call, then one token per
 * call; every decode's logits must equal the forward's logits at that position within 1e-5
 * (absolute, for logits of magnitude ~1-5). A second cache starts from a one-token prompt,
 * and the forward is run again on the CPU's GEMM attention path (the one long prompts take). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "test_util.h"
#include "vera/adapter.h"
#include "test_adapter.h"
#include "vera/backend.h"
#include "vera/model.h"
#include "vera/prng.h"

static double urand(uint64_t *s) { return (double)(vd_mix64((*s)++) >> 11) / 9007199254740992.0 * 2.0 - 1.0; }

/* max |decode - forward| over the positions of one decode schedule */
static double decode_vs_forward(vd_model *m, vd_adapter *v, const int32_t *tok, int T, int prompt, const float *full) {
    int V = m->config.vocab_size;
    vd_kv_cache kv;
    vd_model_kv_alloc(m, &kv, T);
    float *logits = malloc(sizeof(float) * (size_t)V);
    double worst = 0.0;
    for (int pos0 = 0; pos0 < T;) {
        int n = pos0 == 0 ? prompt : 1;
        if (v) CHECK(v->N >= n, "adapter activations too small");
        vd_model_decode(m, &kv, tok + pos0, n, pos0, logits);
        const float *want = full + (size_t)(pos0 + n - 1) * V;
        for (int i = 0; i < V; i++) {
            double d = fabs((double)logits[i] - (double)want[i]);
            if (d > worst) worst = d;
        }
        pos0 += n;
    }
    free(logits);
    vd_model_kv_free(m, &kv);
    return worst;
}

static void run_case(const char *name, vd_model_config mc, int adapted) {
    const vd_backend *be = vd_backend_cpu();
    const vd_model_family *f = vd_model_family_of(mc.arch);
    size_t np = f->num_params(&mc);
    float *hp = malloc(sizeof(float) * np);
    if (mc.arch == VD_ARCH_GPT2) vd_gpt2_init_random(&mc, hp, 5);
    else vd_llama_init_random(&mc, hp, 5);
    uint64_t seed = 99;
    /* larger weights than 0.02 and non-trivial norms / biases, so logits are of order 1-5 (float
     * rounding then differs at ~1e-6 between the one-row and the many-row GEMMs) */
    for (size_t i = 0; i < np; i++) hp[i] = hp[i] * 3.0f + (hp[i] == 1.0f || hp[i] == 0.0f ? 0.3f * (float)urand(&seed) : 0.0f);
    const int T = 12;
    vd_model m;
    vd_model_init(&m, be, &mc, hp);
    vd_model_alloc_acts(&m, 1, T);
    vd_adapter v;
    if (adapted) {
        vd_adapter_options vo = vd_test_vera_options(4, 0.1f, 7, (1u << f->n_kinds) - 1, 0.0f);
        vd_adapter_init(&v, be, &m, &vo);
        vd_model_set_adapter(&m, &v);
        vd_adapter_alloc_acts(&v, T, T, VD_WEFF_NEVER);
        for (size_t i = 0; i < v.n_trainable; i++) v.params[i] = (float)(0.8 * urand(&seed));
        vd_adapter_refresh(&v);
    }
    int32_t tok[12];
    for (int i = 0; i < T; i++) tok[i] = (int32_t)(vd_mix64(seed + 31 * (uint64_t)i) % (uint64_t)mc.vocab_size);
    size_t nl = (size_t)T * mc.vocab_size;
    float *full = malloc(sizeof(float) * nl);
    vd_fwd_ctx ctx = {0, 0, 0};
    int keep_min_t = vd_cpu_attention_gemm_min_t;
    for (int path = 0; path < 2; path++) {
        vd_cpu_attention_gemm_min_t = path == 0 ? keep_min_t : 1; /* direct loops, then GEMMs */
        vd_model_forward(&m, tok, NULL, NULL, 1, &ctx);
        be->to_host(full, vd_model_logits(&m), sizeof(float) * nl);
        double big = 0.0;
        for (size_t i = 0; i < nl; i++) if (fabs(full[i]) > big) big = fabs(full[i]);
        int prompts[2] = {5, 1};
        for (int pi = 0; pi < 2; pi++) {
            double err = decode_vs_forward(&m, adapted ? &v : NULL, tok, T, prompts[pi], full);
            printf("  %-6s %-9s forward on %-6s prompt %d + %d steps: max |decode - forward| %.2e (max |logit| %.2f)\n",
                   name, adapted ? "+ VeRA" : "plain", path ? "GEMMs" : "loops", prompts[pi], T - prompts[pi], err, big);
            CHECK(err <= 1e-5, "%s %s: decode differs from forward by %.3e", name, adapted ? "adapted" : "plain", err);
            CHECK(big > 1.0, "%s: logits too small (%.3g) for the comparison to mean much", name, big);
        }
    }
    vd_cpu_attention_gemm_min_t = keep_min_t;
    free(full);
    if (adapted) vd_adapter_free(&v);
    vd_model_free(&m);
    free(hp);
}

int main(void) {
    vd_model_config gpt2 = {.max_seq_len = 16, .vocab_size = 37, .n_layer = 2, .n_head = 3, .channels = 24,
                            .ln_eps = 1e-5f, .arch = VD_ARCH_GPT2};
    vd_model_config llama = {.max_seq_len = 16, .vocab_size = 29, .n_layer = 2, .n_head = 4, .channels = 16,
                             .ln_eps = 1e-5f, .arch = VD_ARCH_LLAMA, .n_kv_head = 2, .head_dim = 6,
                             .intermediate = 20, .tied = 0, .qkv_bias = 1, .o_bias = 1, .mlp_bias = 1,
                             .rope_theta = 500.0f, .rope_type = VD_ROPE_LLAMA3, .rope_factor = 8.0f,
                             .rope_low_freq_factor = 1.0f, .rope_high_freq_factor = 4.0f, .rope_original_max_pos = 8};
    for (int adapted = 0; adapted < 2; adapted++) {
        run_case("gpt2", gpt2, adapted);
        run_case("llama", llama, adapted);
    }
    TEST_END();
}
