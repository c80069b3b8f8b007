/* init_model.c: `vera-dist init-model`: writes a randomly initialised GPT-2 or Llama as a
 * Hugging Face directory (config.json + model.safetensors), so tests and demos need no
 * downloaded model. The result loads with transformers' from_pretrained. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vera/cli.h"
#include "vera/common.h"
#include "vera/model.h"

static void vd_init_model_usage(FILE *f) {
    fprintf(f,
            "usage: vera-dist init-model --out DIR [options]\n"
            "Writes a randomly initialised model to DIR/config.json and DIR/model.safetensors:\n"
            "GPT-2 (N(0, 0.02), residual projections N(0, 0.02/sqrt(2L)), biases 0, LayerNorm 1/0) or\n"
            "Llama (LlamaForCausalLM: N(0, 0.02) weights, RMSNorm weights 1, untied head).\n"
            "\n"
            "  --out DIR       output directory (created if missing; required)\n"
            "  --arch A        gpt2 or llama                 (default gpt2)\n"
            "  --kv-heads K    llama: key/value heads (GQA)  (default --heads, must divide --heads)\n"
            "  --ffn I         llama: intermediate_size      (default 3 * --dim)\n"
            "  --layers L      transformer blocks            (default 2,   1..1024)\n"
            "  --heads H       attention heads               (default 2,   1..4096, must divide --dim)\n"
            "  --dim C         embedding width n_embd        (default 64,  1..65536)\n"
            "  --vocab V       vocabulary size               (default 256, 1..16777216)\n"
            "  --ctx T         maximum positions n_positions (default 128, 1..16777216)\n"
            "  --seed S        initialisation seed           (default 0,   0..4294967295)\n"
            "  --overwrite     replace an existing DIR/model.safetensors (also --overwrite 1|0)\n"
            "  --help          print this help\n");
}

/* Parses an integer option value in [lo, hi]; anything else is a one-line error naming the option. */
static long long vd_parse_int_opt(const char *opt, const char *val, long long lo, long long hi) {
    char *end = NULL;
    errno = 0;
    long long v = strtoll(val, &end, 10);
    if (val[0] == 0 || *end != 0 || errno == ERANGE || v < lo || v > hi)
        vd_die("init-model: %s '%s' is not valid (expected an integer in %lld..%lld)", opt, val, lo, hi);
    return v;
}

int vd_init_model_main(int argc, char **argv) {
    const char *out = NULL;
    long long layers = 2, heads = 2, dim = 64, vocab = 256, ctx = 128, seed = 0, kv_heads = 0, ffn = 0;
    int llama = 0;
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            vd_init_model_usage(stdout);
            return 0;
        }
    int overwrite = vd_cli_take_flag(&argc, argv, "overwrite", "init-model") == 1;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strncmp(arg, "--", 2) != 0)
            vd_die("init-model: unexpected argument '%s' (expected --option value; see --help)", arg);
        /* --key value or --key=value */
        char key[64];
        const char *val;
        const char *eq = strchr(arg, '=');
        if (eq) {
            size_t n = (size_t)(eq - arg);
            if (n >= sizeof(key)) vd_die("init-model: unknown option '%s' (see --help)", arg);
            memcpy(key, arg, n);
            key[n] = 0;
            val = eq + 1;
        } else {
            if (strlen(arg) >= sizeof(key)) vd_die("init-model: unknown option '%s' (see --help)", arg);
            snprintf(key, sizeof(key), "%s", arg);
            val = NULL;
        }
        int known = strcmp(key, "--out") == 0 || strcmp(key, "--layers") == 0 || strcmp(key, "--heads") == 0 ||
                    strcmp(key, "--dim") == 0 || strcmp(key, "--vocab") == 0 || strcmp(key, "--ctx") == 0 ||
                    strcmp(key, "--seed") == 0 || strcmp(key, "--arch") == 0 || strcmp(key, "--kv-heads") == 0 ||
                    strcmp(key, "--ffn") == 0;
        if (!known)
            vd_die("init-model: unknown option '%s' (expected --out, --arch, --layers, --heads, --kv-heads, --dim, --ffn, "
                   "--vocab, --ctx, --seed, --overwrite)", key);
        if (!val) {
            if (i + 1 >= argc) vd_die("init-model: %s needs a value (see --help)", key);
            val = argv[++i];
        }
        if (strcmp(key, "--out") == 0) {
            if (val[0] == 0) vd_die("init-model: --out is empty (expected a directory)");
            out = val;
        } else if (strcmp(key, "--layers") == 0) layers = vd_parse_int_opt(key, val, 1, 1024);
        else if (strcmp(key, "--heads") == 0) heads = vd_parse_int_opt(key, val, 1, 4096);
        else if (strcmp(key, "--dim") == 0) dim = vd_parse_int_opt(key, val, 1, 65536);
        else if (strcmp(key, "--vocab") == 0) vocab = vd_parse_int_opt(key, val, 1, 1LL << 24);
        else if (strcmp(key, "--ctx") == 0) ctx = vd_parse_int_opt(key, val, 1, 1LL << 24);
        else if (strcmp(key, "--kv-heads") == 0) kv_heads = vd_parse_int_opt(key, val, 1, 4096);
        else if (strcmp(key, "--ffn") == 0) ffn = vd_parse_int_opt(key, val, 1, 1LL << 22);
        else if (strcmp(key, "--arch") == 0) {
            if (strcmp(val, "gpt2") != 0 && strcmp(val, "llama") != 0)
                vd_die("init-model: --arch '%s' is not valid (expected gpt2 or llama)", val);
            llama = strcmp(val, "llama") == 0;
        }
        /* the generator keeps 32 bits of seed (torch's MT19937 seeding); larger seeds would alias */
        else seed = vd_parse_int_opt(key, val, 0, 4294967295LL);
    }
    if (!out) vd_die("init-model: --out is required (expected --out DIR; see --help)");
    if (dim % heads != 0)
        vd_die("init-model: --dim %lld is not divisible by --heads %lld (expected dim %% heads == 0)", dim, heads);

    char st_path[VD_PATH_MAX];
    if (snprintf(st_path, sizeof(st_path), "%s/model.safetensors", out) >= (int)sizeof(st_path))
        vd_die("init-model: --out '%s' is too long", out);
    if (!overwrite && vd_path_exists(st_path))
        vd_die("init-model: %s already exists (pass --overwrite to replace it)", st_path);

    if (!kv_heads) kv_heads = heads;
    if (heads % kv_heads != 0)
        vd_die("init-model: --heads %lld is not a multiple of --kv-heads %lld", heads, kv_heads);
    if (llama && (dim / heads) % 2 != 0)
        vd_die("init-model: --dim / --heads = %lld is odd (RoPE rotates pairs; expected an even head size)", dim / heads);
    vd_model_config cfg = {
        .max_seq_len = (int32_t)ctx,
        .vocab_size = (int32_t)vocab,
        .n_layer = (int32_t)layers,
        .n_head = (int32_t)heads,
        .channels = (int32_t)dim,
        .ln_eps = 1e-5f,
    };
    if (llama) {
        cfg.arch = VD_ARCH_LLAMA;
        snprintf(cfg.hf_architecture, sizeof(cfg.hf_architecture), "LlamaForCausalLM");
        cfg.n_kv_head = (int32_t)kv_heads;
        cfg.head_dim = (int32_t)(dim / heads);
        cfg.intermediate = (int32_t)(ffn ? ffn : 3 * dim);
        cfg.rope_theta = 10000.0f;
    }
    size_t n = vd_model_family_of(cfg.arch)->num_params(&cfg);
    float *params = mallocCheck(n * sizeof(float));
    if (llama) vd_llama_init_random(&cfg, params, (uint64_t)seed);
    else vd_gpt2_init_random(&cfg, params, (uint64_t)seed);
    vd_model_save_hf(out, &cfg, params);
    free(params);
    vd_log("init-model: wrote %s (config.json, model.safetensors): %s with %lld layers, %lld heads (%lld kv), dim %lld, "
           "vocab %lld, ctx %lld, %zu parameters, seed %lld\n",
           out, llama ? "Llama" : "GPT-2", layers, heads, kv_heads, dim, vocab, ctx, n, seed);
    return 0;
}
