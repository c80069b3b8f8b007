/* test_model_io.c: GPT-2 parameter layout, random init, Hugging Face directory round trip,
 * fingerprint, hub-style names, and every bad directory dying with the file and tensor named.
 * Also drives `init-model` through vd_init_model_main, and reads llm.c model files (versions 3
 * and 5, padded vocabulary; bad headers and sizes die naming the file). */
#define _POSIX_C_SOURCE 200809L
#include <fcntl.h>
#include <stdint.h>
#include <string.h>

#include "test_util.h"
#include "vera/cli.h"
#include "vera/common.h"
#include "vera/model.h"
#include "vera/safetensors.h"

static char g_dir[256];

static const vd_gpt2_config k_cfg = {.max_seq_len = 12, .vocab_size = 50, .n_layer = 2, .n_head = 2, .channels = 16, .ln_eps = 1e-5f};

static void sub(char *out, size_t cap, const char *name) { snprintf(out, cap, "%s/%s", g_dir, name); }

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) { perror(path); exit(1); }
}

/* A complete tensor list for cfg, as the test itself understands the HF layout (independent of
 * model_io.c's tables): name, shape, and a pointer into a buffer in vd_gpt2_params order. */
typedef struct {
    vd_st_entry e[64];
    char names[64][128];
    int32_t n;
} tensor_list;

static void build_tensor_list(tensor_list *tl, const vd_gpt2_config *c, const float *params, const char *prefix) {
    int64_t C = c->channels, L = c->n_layer;
    /* (suffix, per-layer?, dim0, dim1 or 0) in vd_gpt2_params order */
    struct { const char *suffix; int per_layer; int64_t d0, d1; } t[16] = {
        {"wte.weight", 0, c->vocab_size, C}, {"wpe.weight", 0, c->max_seq_len, C},
        {"ln_1.weight", 1, C, 0},            {"ln_1.bias", 1, C, 0},
        {"attn.c_attn.weight", 1, C, 3 * C}, {"attn.c_attn.bias", 1, 3 * C, 0},
        {"attn.c_proj.weight", 1, C, C},     {"attn.c_proj.bias", 1, C, 0},
        {"ln_2.weight", 1, C, 0},            {"ln_2.bias", 1, C, 0},
        {"mlp.c_fc.weight", 1, C, 4 * C},    {"mlp.c_fc.bias", 1, 4 * C, 0},
        {"mlp.c_proj.weight", 1, 4 * C, C},  {"mlp.c_proj.bias", 1, C, 0},
        {"ln_f.weight", 0, C, 0},            {"ln_f.bias", 0, C, 0},
    };
    tl->n = 0;
    const float *p = params;
    for (int w = 0; w < 16; w++) {
        int64_t per = t[w].d0 * (t[w].d1 ? t[w].d1 : 1);
        for (int64_t l = 0; l < (t[w].per_layer ? L : 1); l++) {
            vd_st_entry *e = &tl->e[tl->n];
            *e = (vd_st_entry){0}; /* dtype NULL: F32 */
            if (t[w].per_layer) snprintf(tl->names[tl->n], 128, "%sh.%d.%s", prefix, (int)l, t[w].suffix);
            else snprintf(tl->names[tl->n], 128, "%s%s", prefix, t[w].suffix);
            e->name = tl->names[tl->n];
            e->data = p;
            e->ndim = t[w].d1 ? 2 : 1;
            e->shape[0] = t[w].d0;
            e->shape[1] = t[w].d1;
            p += per;
            tl->n++;
        }
    }
}

static float *random_params(const vd_gpt2_config *c, uint64_t seed) {
    float *p = malloc(vd_gpt2_num_params(c) * sizeof(float));
    if (!p) { fprintf(stderr, "out of memory\n"); exit(1); }
    vd_gpt2_init_random(c, p, seed);
    return p;
}

static void test_layout(void) {
    const vd_gpt2_config *c = &k_cfg;
    size_t C = 16, L = 2, V = 50, T = 12;
    size_t want = V * C + T * C + L * (12 * C * C + 13 * C) + 2 * C;
    CHECK(vd_gpt2_num_params(c) == want, "num_params %zu, want %zu", vd_gpt2_num_params(c), want);
    size_t sizes[VD_GPT2_NUM_PARAMS];
    vd_gpt2_param_sizes(c, sizes);
    CHECK(sizes[0] == V * C && sizes[4] == L * C * 3 * C && sizes[12] == L * 4 * C * C && sizes[15] == C, "sizes");
    float *buf = malloc(want * sizeof(float));
    vd_gpt2_params p;
    vd_gpt2_params_point(&p, c, buf);
    CHECK(p.wte == buf && p.wpe == buf + V * C, "wte/wpe pointers");
    CHECK(p.qkvw == p.ln1b + L * C && p.fcprojb + L * C == p.lnfw && p.lnfb + C == buf + want, "pointer chain");
    free(buf);
    char name[128];
    vd_gpt2_param_name(4, 1, name, sizeof(name));
    CHECK(strcmp(name, "transformer.h.1.attn.c_attn.weight") == 0, "name %s", name);
    vd_gpt2_param_name(0, 7, name, sizeof(name));
    CHECK(strcmp(name, "transformer.wte.weight") == 0, "name %s", name);
    vd_gpt2_param_name(15, 0, name, sizeof(name));
    CHECK(strcmp(name, "transformer.ln_f.bias") == 0, "name %s", name);
}

static double stddev(const float *x, size_t n) {
    double s = 0, s2 = 0;
    for (size_t i = 0; i < n; i++) { s += x[i]; s2 += (double)x[i] * x[i]; }
    return sqrt(s2 / n - (s / n) * (s / n));
}

static void test_init_random(void) {
    vd_gpt2_config c = {.max_seq_len = 64, .vocab_size = 300, .n_layer = 8, .n_head = 4, .channels = 64, .ln_eps = 1e-5f};
    float *a = random_params(&c, 3), *b = random_params(&c, 3), *d = random_params(&c, 4);
    size_t n = vd_gpt2_num_params(&c);
    CHECK(memcmp(a, b, n * sizeof(float)) == 0, "init not deterministic in the seed");
    CHECK(memcmp(a, d, n * sizeof(float)) != 0, "different seeds gave the same init");
    vd_gpt2_params p;
    vd_gpt2_params_point(&p, &c, a);
    size_t L = 8, C = 64;
    int ok = 1;
    for (size_t i = 0; i < L * C; i++) ok &= p.ln1w[i] == 1.0f && p.ln1b[i] == 0.0f && p.ln2w[i] == 1.0f && p.attprojb[i] == 0.0f;
    for (size_t i = 0; i < L * 3 * C; i++) ok &= p.qkvb[i] == 0.0f;
    for (size_t i = 0; i < C; i++) ok &= p.lnfw[i] == 1.0f && p.lnfb[i] == 0.0f;
    CHECK(ok, "LayerNorm weights must be 1 and biases 0");
    CHECK_CLOSE(stddev(p.wte, 300 * C), 0.02, 0.05, 0, "wte std");
    CHECK_CLOSE(stddev(p.qkvw, L * C * 3 * C), 0.02, 0.05, 0, "c_attn std");
    CHECK_CLOSE(stddev(p.fcw, L * C * 4 * C), 0.02, 0.05, 0, "c_fc std");
    CHECK_CLOSE(stddev(p.attprojw, L * C * C), 0.02 / 4.0, 0.05, 0, "attn.c_proj std 0.02/sqrt(2L)");
    CHECK_CLOSE(stddev(p.fcprojw, L * 4 * C * C), 0.02 / 4.0, 0.05, 0, "mlp.c_proj std 0.02/sqrt(2L)");
    free(a); free(b); free(d);
}

static void test_round_trip_and_fingerprint(void) {
    char dir[512];
    sub(dir, sizeof(dir), "rt/nested"); /* save creates missing parents */
    float *p = random_params(&k_cfg, 11);
    vd_gpt2_save_hf(dir, &k_cfg, p);
    vd_gpt2_config c;
    memset(&c, 0, sizeof(c));
    float *q = vd_gpt2_load_hf(dir, &c);
    CHECK(c.max_seq_len == 12 && c.vocab_size == 50 && c.n_layer == 2 && c.n_head == 2 && c.channels == 16,
          "config round trip: T %d V %d L %d H %d C %d", c.max_seq_len, c.vocab_size, c.n_layer, c.n_head, c.channels);
    CHECK(c.ln_eps == 1e-5f, "ln_eps %g", c.ln_eps);
    size_t n = vd_gpt2_num_params(&k_cfg);
    CHECK(memcmp(p, q, n * sizeof(float)) == 0, "parameters not bit-identical after save/load");

    uint64_t f1 = vd_gpt2_fingerprint(&k_cfg, p), f2 = vd_gpt2_fingerprint(&c, q);
    CHECK(f1 == f2, "fingerprint differs after round trip");
    q[n / 2] = nextafterf(q[n / 2], 1.0f);
    CHECK(vd_gpt2_fingerprint(&c, q) != f1, "fingerprint blind to a one-ulp change");
    q[n / 2] = p[n / 2];
    q[n - 1] = -q[n - 1] - 1.0f;
    CHECK(vd_gpt2_fingerprint(&c, q) != f1, "fingerprint blind to the last value");
    q[n - 1] = p[n - 1];
    c.ln_eps = 1e-6f;
    CHECK(vd_gpt2_fingerprint(&c, q) != f1, "fingerprint blind to layer_norm_epsilon");

    /* the file on disk: F32, "transformer." names, metadata format pt, no lm_head */
    char path[600];
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    vd_safetensors st;
    vd_safetensors_open(&st, path);
    CHECK(st.n_tensors == 4 + 12 * 2, "n_tensors %d", st.n_tensors);
    const vd_st_tensor *t = vd_safetensors_find(&st, "transformer.h.1.mlp.c_proj.weight");
    CHECK(t && t->dtype == VD_DTYPE_F32 && t->ndim == 2 && t->shape[0] == 64 && t->shape[1] == 16, "c_proj entry");
    CHECK(vd_safetensors_find(&st, "lm_head.weight") == NULL, "lm_head.weight written (it is tied)");
    vd_safetensors_close(&st);
    free(p);
    free(q);
}

/* The original hub "gpt2" checkpoint: no "transformer." prefix, attn.bias buffers, lm_head. */
static void test_hub_names(void) {
    char dir[512], path[600];
    sub(dir, sizeof(dir), "hub");
    float *p = random_params(&k_cfg, 5);
    vd_gpt2_save_hf(dir, &k_cfg, p); /* for config.json */
    tensor_list tl;
    build_tensor_list(&tl, &k_cfg, p, "");
    static float mask[12 * 12];
    for (int i = 0; i < 12 * 12; i++) mask[i] = 1.0f;
    tl.e[tl.n++] = (vd_st_entry){"h.0.attn.bias", mask, 4, {1, 1, 12, 12}};
    tl.e[tl.n++] = (vd_st_entry){"h.1.attn.masked_bias", mask, 0, {0}};
    tl.e[tl.n++] = (vd_st_entry){"lm_head.weight", p, 2, {50, 16}};
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    vd_safetensors_write_f32(path, tl.e, tl.n, NULL, 0);
    /* old configs: n_ctx instead of n_positions, no activation_function, gelu_pytorch_tanh ok */
    snprintf(path, sizeof(path), "%s/config.json", dir);
    write_text(path, "{\"n_layer\": 2, \"n_head\": 2, \"n_embd\": 16, \"vocab_size\": 50, \"n_ctx\": 12, "
                     "\"activation_function\": \"gelu_pytorch_tanh\", \"layer_norm_epsilon\": 1e-6}");
    vd_gpt2_config c;
    float *q = vd_gpt2_load_hf(dir, &c);
    CHECK(c.max_seq_len == 12 && c.ln_eps == 1e-6f, "n_ctx fallback / epsilon: T %d eps %g", c.max_seq_len, c.ln_eps);
    CHECK(memcmp(p, q, vd_gpt2_num_params(&k_cfg) * sizeof(float)) == 0, "hub-style names loaded wrong values");
    free(q);
    free(p);
}

/* ---- bad directories ---- */

static void load_dir(void *arg) {
    vd_gpt2_config c;
    free(vd_gpt2_load_hf((const char *)arg, &c));
}

/* A fresh directory with a good config.json and the given tensors. */
static void make_dir(const char *name, const tensor_list *tl, char *dir, size_t cap) {
    sub(dir, cap, name);
    float *p = random_params(&k_cfg, 1);
    vd_gpt2_save_hf(dir, &k_cfg, p);
    free(p);
    char path[600];
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    vd_safetensors_write_f32(path, tl->e, tl->n, NULL, 0);
}

static void test_bad_tensors(void) {
    char dir[512], needle[1024];
    float *p = random_params(&k_cfg, 2);
    tensor_list tl;

    /* drop transformer.h.1.mlp.c_fc.bias */
    build_tensor_list(&tl, &k_cfg, p, "transformer.");
    int k = -1;
    for (int i = 0; i < tl.n; i++) if (strcmp(tl.names[i], "transformer.h.1.mlp.c_fc.bias") == 0) k = i;
    CHECK(k >= 0, "test list lacks the tensor to drop");
    for (int i = k; i + 1 < tl.n; i++) { tl.e[i] = tl.e[i + 1]; memcpy(tl.names[i], tl.names[i + 1], 128); tl.e[i].name = tl.names[i]; }
    tl.n--;
    make_dir("missing", &tl, dir, sizeof(dir));
    snprintf(needle, sizeof(needle), "%s/model.safetensors: missing tensor transformer.h.1.mlp.c_fc.bias", dir);
    CHECK_DIES(load_dir, dir, needle);

    /* c_attn.weight of layer 0 stored as [16, 32] */
    build_tensor_list(&tl, &k_cfg, p, "transformer.");
    for (int i = 0; i < tl.n; i++) if (strcmp(tl.names[i], "transformer.h.0.attn.c_attn.weight") == 0) tl.e[i].shape[1] = 32;
    make_dir("shape", &tl, dir, sizeof(dir));
    snprintf(needle, sizeof(needle),
             "%s/model.safetensors: tensor transformer.h.0.attn.c_attn.weight has shape [16, 32], expected [16, 48]", dir);
    CHECK_DIES(load_dir, dir, needle);

    /* a transposed (nn.Linear-style) weight is a shape error too */
    build_tensor_list(&tl, &k_cfg, p, "transformer.");
    for (int i = 0; i < tl.n; i++) if (strcmp(tl.names[i], "transformer.h.1.mlp.c_fc.weight") == 0) { tl.e[i].shape[0] = 64; tl.e[i].shape[1] = 16; }
    make_dir("transposed", &tl, dir, sizeof(dir));
    snprintf(needle, sizeof(needle), "%s/model.safetensors: tensor transformer.h.1.mlp.c_fc.weight has shape [64, 16], expected [16, 64]", dir);
    CHECK_DIES(load_dir, dir, needle);

    /* wrong rank */
    build_tensor_list(&tl, &k_cfg, p, "transformer.");
    tl.e[tl.n - 1].ndim = 2; tl.e[tl.n - 1].shape[0] = 1; tl.e[tl.n - 1].shape[1] = 16; /* ln_f.bias as [1, 16] */
    make_dir("rank", &tl, dir, sizeof(dir));
    snprintf(needle, sizeof(needle), "%s/model.safetensors: tensor transformer.ln_f.bias has shape [1, 16], expected [16]", dir);
    CHECK_DIES(load_dir, dir, needle);

    /* no model.safetensors at all */
    sub(dir, sizeof(dir), "noweights");
    vd_mkdir_p(dir);
    char path[600];
    snprintf(path, sizeof(path), "%s/config.json", dir);
    write_text(path, "{\"n_layer\": 2, \"n_head\": 2, \"n_embd\": 16, \"vocab_size\": 50, \"n_positions\": 12}");
    snprintf(needle, sizeof(needle), "%s/model.safetensors: missing", dir);
    CHECK_DIES(load_dir, dir, needle);
    free(p);
}

static void expect_bad_config(const char *name, const char *json, const char *fragment) {
    char dir[512], path[600], needle[1024];
    sub(dir, sizeof(dir), name);
    float *p = random_params(&k_cfg, 1);
    vd_gpt2_save_hf(dir, &k_cfg, p);
    free(p);
    snprintf(path, sizeof(path), "%s/config.json", dir);
    write_text(path, json);
    snprintf(needle, sizeof(needle), "%s: %s", path, fragment);
    CHECK_DIES(load_dir, dir, needle);
}

static void test_bad_config(void) {
    expect_bad_config("cfg_json", "{\"n_layer\": 2, \"n_head\": ", "not valid JSON");
    expect_bad_config("cfg_array", "[2, 2]", "not a JSON object");
    expect_bad_config("cfg_nohead", "{\"n_layer\": 2, \"n_embd\": 16, \"vocab_size\": 50, \"n_positions\": 12}",
                      "n_head is missing");
    expect_bad_config("cfg_nopos", "{\"n_layer\": 2, \"n_head\": 2, \"n_embd\": 16, \"vocab_size\": 50}",
                      "n_ctx is missing");
    expect_bad_config("cfg_zero", "{\"n_layer\": 0, \"n_head\": 2, \"n_embd\": 16, \"vocab_size\": 50, \"n_positions\": 12}",
                      "n_layer = 0 is not valid");
    expect_bad_config("cfg_frac", "{\"n_layer\": 2.5, \"n_head\": 2, \"n_embd\": 16, \"vocab_size\": 50, \"n_positions\": 12}",
                      "n_layer = 2.5 is not valid");
    expect_bad_config("cfg_str", "{\"n_layer\": \"2\", \"n_head\": 2, \"n_embd\": 16, \"vocab_size\": 50, \"n_positions\": 12}",
                      "n_layer is not a number");
    expect_bad_config("cfg_div", "{\"n_layer\": 2, \"n_head\": 3, \"n_embd\": 16, \"vocab_size\": 50, \"n_positions\": 12}",
                      "n_embd 16 is not divisible by n_head 3");
    expect_bad_config("cfg_act", "{\"n_layer\": 2, \"n_head\": 2, \"n_embd\": 16, \"vocab_size\": 50, \"n_positions\": 12, "
                                 "\"activation_function\": \"relu\"}",
                      "activation_function \"relu\" is not supported");
    expect_bad_config("cfg_type", "{\"model_type\": \"llama\", \"n_layer\": 2, \"n_head\": 2, \"n_embd\": 16, "
                                  "\"vocab_size\": 50, \"n_positions\": 12}",
                      "model_type is llama");
    expect_bad_config("cfg_eps", "{\"n_layer\": 2, \"n_head\": 2, \"n_embd\": 16, \"vocab_size\": 50, \"n_positions\": 12, "
                                 "\"layer_norm_epsilon\": -1}",
                      "layer_norm_epsilon is not valid");
    expect_bad_config("cfg_inner", "{\"n_layer\": 2, \"n_head\": 2, \"n_embd\": 16, \"vocab_size\": 50, \"n_positions\": 12, "
                                   "\"n_inner\": 32}",
                      "n_inner must be null or 4 * n_embd = 64");
    expect_bad_config("cfg_tie", "{\"n_layer\": 2, \"n_head\": 2, \"n_embd\": 16, \"vocab_size\": 50, \"n_positions\": 12, "
                                 "\"tie_word_embeddings\": false}",
                      "tie_word_embeddings must be true");
    /* the config disagreeing with the weights is a shape error naming the tensor */
    char dir[512], needle[1024];
    sub(dir, sizeof(dir), "cfg_mismatch");
    float *p = random_params(&k_cfg, 1);
    vd_gpt2_save_hf(dir, &k_cfg, p);
    free(p);
    char path[600];
    snprintf(path, sizeof(path), "%s/config.json", dir);
    write_text(path, "{\"n_layer\": 2, \"n_head\": 2, \"n_embd\": 16, \"vocab_size\": 51, \"n_positions\": 12}");
    snprintf(needle, sizeof(needle), "%s/model.safetensors: tensor transformer.wte.weight has shape [50, 16], expected [51, 16]", dir);
    CHECK_DIES(load_dir, dir, needle);
    /* no config.json */
    sub(dir, sizeof(dir), "empty_dir");
    vd_mkdir_p(dir);
    snprintf(needle, sizeof(needle), "%s/config.json: missing", dir);
    CHECK_DIES(load_dir, dir, needle);
}

/* ---- init-model ---- */

typedef struct { int argc; const char *argv[24]; } cli_args;

static void run_cli(void *arg) {
    cli_args *a = arg;
    int rc = vd_init_model_main(a->argc, (char **)a->argv);
    exit(rc);
}

static int cli(cli_args *a) {
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open("/dev/null", O_WRONLY);
        if (fd >= 0) dup2(fd, 1); /* the summary line and --help */
        run_cli(a);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void test_init_model_cli(void) {
    char dir[512], needle[1024];
    sub(dir, sizeof(dir), "cli");
    cli_args a = {13, {"vera-dist", "--out", dir, "--layers", "3", "--heads=4", "--dim", "32", "--vocab", "70", "--ctx", "20", "--seed=9"}};
    CHECK(cli(&a) == 0, "init-model failed");
    vd_gpt2_config c;
    float *q = vd_gpt2_load_hf(dir, &c);
    CHECK(c.n_layer == 3 && c.n_head == 4 && c.channels == 32 && c.vocab_size == 70 && c.max_seq_len == 20, "init-model config");
    float *p = random_params(&c, 9);
    CHECK(memcmp(p, q, vd_gpt2_num_params(&c) * sizeof(float)) == 0, "init-model weights differ from vd_gpt2_init_random(seed 9)");
    free(p);
    free(q);

    /* refuses to overwrite, unless asked */
    snprintf(needle, sizeof(needle), "init-model: %s/model.safetensors already exists (pass --overwrite", dir);
    cli_args again = {3, {"vera-dist", "--out", dir}};
    CHECK_DIES(run_cli, &again, needle);
    cli_args over = {4, {"vera-dist", "--out", dir, "--overwrite"}};
    CHECK(cli(&over) == 0, "--overwrite refused");
    q = vd_gpt2_load_hf(dir, &c);
    CHECK(c.n_layer == 2 && c.channels == 64 && c.vocab_size == 256 && c.max_seq_len == 128, "defaults: L %d C %d V %d T %d",
          c.n_layer, c.channels, c.vocab_size, c.max_seq_len);
    free(q);

    cli_args help = {2, {"vera-dist", "--help"}};
    CHECK(cli(&help) == 0, "--help should exit 0");
    cli_args bad1 = {5, {"vera-dist", "--out", dir, "--layers", "0"}};
    CHECK_DIES(run_cli, &bad1, "init-model: --layers '0' is not valid (expected an integer in 1..1024)");
    cli_args bad2 = {5, {"vera-dist", "--out", dir, "--dim", "12x"}};
    CHECK_DIES(run_cli, &bad2, "init-model: --dim '12x' is not valid");
    cli_args bad3 = {5, {"vera-dist", "--out", dir, "--colour", "blue"}};
    CHECK_DIES(run_cli, &bad3, "init-model: unknown option '--colour'");
    cli_args bad4 = {7, {"vera-dist", "--out", dir, "--dim", "10", "--heads", "4"}};
    CHECK_DIES(run_cli, &bad4, "init-model: --dim 10 is not divisible by --heads 4");
    cli_args bad5 = {3, {"vera-dist", "--layers", "2"}};
    CHECK_DIES(run_cli, &bad5, "init-model: --out is required");
    cli_args bad6 = {4, {"vera-dist", "--out", dir, "--seed"}};
    CHECK_DIES(run_cli, &bad6, "init-model: --seed needs a value");
    cli_args bad7 = {5, {"vera-dist", "--out", dir, "--seed", "-1"}};
    CHECK_DIES(run_cli, &bad7, "init-model: --seed '-1' is not valid (expected an integer in 0..4294967295)");
}

/* ---- llm.c model files (vd_gpt2_load_llmc, vd_gpt2_load) ---- */

static uint16_t f32_to_bf16_rne(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* Writes params (vd_gpt2_params order, Conv1D layout) as llm.c does: header, wte padded to Vp
 * rows of zeros, linear weights transposed to (out, in); version 3 fp32, 5 bf16. Written by
 * hand here, independent of model_io.c. */
static void write_llmc(const char *path, const vd_gpt2_config *c, const float *params, int version, int32_t Vp) {
    FILE *f = fopen(path, "wb");
    if (!f) { perror(path); exit(1); }
    int32_t h[256] = {20240326, version, c->max_seq_len, c->vocab_size, c->n_layer, c->n_head, c->channels, Vp};
    fwrite(h, 4, 256, f);
    size_t sizes[VD_GPT2_NUM_PARAMS];
    vd_gpt2_param_sizes(c, sizes);
    int64_t C = c->channels;
    const float *p = params;
    for (int w = 0; w < VD_GPT2_NUM_PARAMS; w++) {
        size_t n = sizes[w];
        float *buf = malloc(sizeof(float) * (w == 0 ? (size_t)Vp * C : n));
        if (w == 0) {
            memcpy(buf, p, n * sizeof(float));
            for (size_t i = n; i < (size_t)Vp * C; i++) buf[i] = 0.0f;
        } else if (w == 4 || w == 6 || w == 10 || w == 12) {
            int64_t in = w == 12 ? 4 * C : C, out = w == 4 ? 3 * C : w == 10 ? 4 * C : C;
            for (int64_t l = 0; l < c->n_layer; l++)
                for (int64_t i = 0; i < in; i++)
                    for (int64_t o = 0; o < out; o++) buf[l * in * out + o * in + i] = p[l * in * out + i * out + o];
        } else {
            memcpy(buf, p, n * sizeof(float));
        }
        size_t cnt = w == 0 ? (size_t)Vp * C : n;
        for (size_t i = 0; i < cnt; i++) {
            if (version == 3) fwrite(&buf[i], 4, 1, f);
            else { uint16_t b = f32_to_bf16_rne(buf[i]); fwrite(&b, 2, 1, f); }
        }
        free(buf);
        p += n;
    }
    fclose(f);
}

static void load_llmc(void *arg) {
    vd_gpt2_config c;
    free(vd_gpt2_load_llmc((const char *)arg, &c));
}
static void load_any(void *arg) {
    vd_gpt2_config c;
    free(vd_gpt2_load((const char *)arg, &c));
}

/* Copies src to dst with header int `idx` set to `value` (idx < 0: unchanged), dropping `cut`
 * bytes from the end and appending `extra` zero bytes. */
static void rewrite(const char *src, const char *dst, int idx, int32_t value, long cut, int extra) {
    FILE *f = fopen(src, "rb");
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    char *buf = malloc((size_t)n + 16);
    if (fread(buf, 1, (size_t)n, f) != (size_t)n) { perror(src); exit(1); }
    fclose(f);
    if (idx >= 0) memcpy(buf + 4 * idx, &value, 4);
    n -= cut;
    for (int i = 0; i < extra; i++) buf[n++] = 0;
    f = fopen(dst, "wb");
    fwrite(buf, 1, (size_t)n, f);
    fclose(f);
    free(buf);
}

static void test_llmc(void) {
    const vd_gpt2_config *c = &k_cfg; /* V 50 -> Vp 64 */
    float *p = random_params(c, 21);
    for (size_t i = 0; i < vd_gpt2_num_params(c); i++) p[i] += 1e-3f * (float)(i % 7); /* biases, LN non-trivial */
    size_t n = vd_gpt2_num_params(c);
    char v3[512], v5[512], bad[512], needle[1024];
    sub(v3, sizeof(v3), "gpt2_v3.bin");
    sub(v5, sizeof(v5), "gpt2_v5.bin");
    write_llmc(v3, c, p, 3, 64);
    write_llmc(v5, c, p, 5, 64);

    vd_gpt2_config got;
    memset(&got, 0, sizeof(got));
    float *q = vd_gpt2_load_llmc(v3, &got);
    CHECK(got.max_seq_len == 12 && got.vocab_size == 50 && got.n_layer == 2 && got.n_head == 2 && got.channels == 16 &&
          got.ln_eps == 1e-5f, "llm.c v3 config: T %d V %d L %d H %d C %d eps %g", got.max_seq_len, got.vocab_size,
          got.n_layer, got.n_head, got.channels, got.ln_eps);
    CHECK(memcmp(p, q, n * sizeof(float)) == 0, "llm.c v3: parameters differ from what was written");
    CHECK(vd_gpt2_fingerprint(&got, q) == vd_gpt2_fingerprint(c, p), "llm.c v3: fingerprint differs from the HF one");
    free(q);
    q = vd_gpt2_load(v3, &got); /* a regular file goes to the llm.c reader */
    CHECK(memcmp(p, q, n * sizeof(float)) == 0, "vd_gpt2_load(file) did not read the llm.c file");
    free(q);

    q = vd_gpt2_load_llmc(v5, &got);
    int ok = 1;
    for (size_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)f32_to_bf16_rne(p[i]) << 16;
        float want;
        memcpy(&want, &u, 4);
        ok &= q[i] == want;
    }
    CHECK(ok, "llm.c v5: parameters are not the bf16-rounded values widened to fp32");
    free(q);

    /* a directory goes to the HF reader */
    char dir[512];
    sub(dir, sizeof(dir), "llmc_hf");
    vd_gpt2_save_hf(dir, c, p);
    q = vd_gpt2_load(dir, &got);
    CHECK(memcmp(p, q, n * sizeof(float)) == 0, "vd_gpt2_load(dir) did not read the HF directory");
    free(q);
    sub(bad, sizeof(bad), "no_such_model");
    snprintf(needle, sizeof(needle), "%s: No such file or directory (expected a Hugging Face GPT-2 directory", bad);
    CHECK_DIES(load_any, bad, needle);

    /* bad files: each error names the file and what was expected */
    long size3 = 1024 + 4 * (long)(n + (64 - 50) * 16);
    sub(bad, sizeof(bad), "magic.bin");
    rewrite(v3, bad, 0, 20240520, 0, 0); /* a token shard's magic */
    snprintf(needle, sizeof(needle), "%s: wrong magic 20240520 (expected 20240326", bad);
    CHECK_DIES(load_llmc, bad, needle);
    sub(bad, sizeof(bad), "version.bin");
    rewrite(v3, bad, 1, 4, 0, 0);
    snprintf(needle, sizeof(needle), "%s: unsupported llm.c model version 4 (expected 3: fp32 or 5: bf16 parameters)", bad);
    CHECK_DIES(load_llmc, bad, needle);
    sub(bad, sizeof(bad), "trunc.bin");
    rewrite(v3, bad, -1, 0, 4, 0);
    snprintf(needle, sizeof(needle), "%s: truncated: header (version 3, maxT 12, V 50, Vp 64, L 2, NH 2, C 16) needs %ld bytes, file has %ld",
             bad, size3, size3 - 4);
    CHECK_DIES(load_llmc, bad, needle);
    sub(bad, sizeof(bad), "long.bin");
    rewrite(v3, bad, -1, 0, 0, 1);
    snprintf(needle, sizeof(needle), "%s: too long: header", bad);
    CHECK_DIES(load_llmc, bad, needle);
    sub(bad, sizeof(bad), "short.bin");
    rewrite(v3, bad, -1, 0, size3 - 10, 0);
    snprintf(needle, sizeof(needle), "%s: truncated: 10 bytes, shorter than the 1024-byte llm.c model header", bad);
    CHECK_DIES(load_llmc, bad, needle);
    sub(bad, sizeof(bad), "v5_as_v3.bin"); /* version 5 data with a version 3 header: a size mismatch */
    rewrite(v5, bad, 1, 3, 0, 0);
    snprintf(needle, sizeof(needle), "%s: truncated: header (version 3", bad);
    CHECK_DIES(load_llmc, bad, needle);
    sub(bad, sizeof(bad), "vp.bin");
    rewrite(v3, bad, 7, 49, 0, 0);
    snprintf(needle, sizeof(needle), "%s: llm.c header field 7 (padded_vocab_size) = 49 is not valid (expected 50..", bad);
    CHECK_DIES(load_llmc, bad, needle);
    sub(bad, sizeof(bad), "layers.bin");
    rewrite(v3, bad, 4, 0, 0, 0);
    snprintf(needle, sizeof(needle), "%s: llm.c header field 4 (num_layers) = 0 is not valid", bad);
    CHECK_DIES(load_llmc, bad, needle);
    sub(bad, sizeof(bad), "heads.bin");
    rewrite(v3, bad, 5, 3, 0, 0);
    snprintf(needle, sizeof(needle), "%s: channels 16 is not divisible by num_heads 3", bad);
    CHECK_DIES(load_llmc, bad, needle);
    free(p);
}

int main(void) {
    snprintf(g_dir, sizeof(g_dir), "/tmp/vd_test_model_io_XXXXXX");
    if (!mkdtemp(g_dir)) { perror("mkdtemp"); return 1; }
    test_layout();
    test_init_random();
    test_round_trip_and_fingerprint();
    test_hub_names();
    test_bad_tensors();
    test_bad_config();
    test_init_model_cli();
    test_llmc();
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_dir);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", g_dir);
    TEST_END();
}
