/* test_weights.c: vd_weights on Hugging Face directories written here: a single
 * model.safetensors, a sharded model with model.safetensors.index.json, F16/BF16 tensors from
 * hand-built bytes, and every malformed directory dying with one line naming the file. */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>

#include "test_util.h"
#include "vera/common.h"
#include "vera/safetensors.h"
#include "vera/weights.h"

static char g_dir[256];

static void mkpath(char *out, size_t cap, const char *sub, const char *name) {
    if (name) snprintf(out, cap, "%s/%s/%s", g_dir, sub, name);
    else snprintf(out, cap, "%s/%s", g_dir, sub);
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) { fprintf(stderr, "%s: write failed\n", path); exit(1); }
}

/* a model directory with config.json (no weights yet) */
static void make_dir(const char *sub, int with_config) {
    char p[512];
    mkpath(p, sizeof(p), sub, NULL);
    if (mkdir(p, 0755) != 0) { perror(p); exit(1); }
    if (with_config) {
        mkpath(p, sizeof(p), sub, "config.json");
        write_text(p, "{\"model_type\": \"llama\", \"hidden_size\": 4, \"num_hidden_layers\": 1}");
    }
}

/* safetensors by hand: [u64 len][header][data], for dtypes vd_safetensors_write_f32 cannot write */
static void write_raw_st(const char *path, const char *header, const void *data, size_t data_bytes) {
    uint64_t len = strlen(header);
    FILE *f = fopen(path, "wb");
    if (!f) { perror(path); exit(1); }
    int ok = fwrite(&len, 8, 1, f) == 1 && fwrite(header, 1, len, f) == len;
    if (data_bytes) ok &= fwrite(data, 1, data_bytes, f) == data_bytes;
    ok &= fclose(f) == 0;
    if (!ok) { fprintf(stderr, "%s: write failed\n", path); exit(1); }
}

static int same_bits(const float *a, const float *b, size_t n) { return memcmp(a, b, n * sizeof(float)) == 0; }

/* fp32 test data: distinct, exactly representable, negative values included */
static const float k_a[6] = {1.0f, -2.5f, 3.25f, 1e-30f, -0.0f, 65504.0f};
static const float k_b[3] = {0.125f, -7.0f, 1e10f};
static const float k_c[8] = {0, 1, 2, 3, 4, 5, 6, 7};

/* F16 bits: 1.0 = 0x3c00, -2.0 = 0xc000, 0.5 = 0x3800, smallest subnormal 2^-24 = 0x0001.
 * BF16 bits: 1.0 = 0x3f80, -3.0 = 0xc040, 2^-126 = 0x0080, 1e38-ish = 0x7e96 (exact widening). */
static const uint16_t k_f16[4] = {0x3c00, 0xc000, 0x3800, 0x0001};
static const uint16_t k_bf16[4] = {0x3f80, 0xc040, 0x0080, 0x7e96};

static void check_f16_bf16(vd_weights *w) {
    float got[4];
    int64_t s4[1] = {4}, s22[2] = {2, 2};
    vd_weights_read_f32(w, "h", 1, s4, got);
    const float want_h[4] = {1.0f, -2.0f, 0.5f, 5.9604644775390625e-08f};
    CHECK(same_bits(got, want_h, 4), "F16 tensor h: got %g %g %g %g", got[0], got[1], got[2], got[3]);
    vd_weights_read_f32(w, "bf", 2, s22, got);
    for (int i = 0; i < 4; i++) {
        uint32_t bits = (uint32_t)k_bf16[i] << 16, gb;
        memcpy(&gb, &got[i], 4);
        CHECK(gb == bits, "BF16 element %d: bits %08x want %08x", i, gb, bits);
    }
}

/* header for a file holding h (F16 [4]), bf (BF16 [2,2]) and ids (I32 [2]) */
static void write_half_file(const char *path) {
    const char *hdr = "{\"h\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[0,8]},"
                      "\"bf\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[8,16]},"
                      "\"ids\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[16,24]}}";
    uint8_t data[24];
    memcpy(data, k_f16, 8);
    memcpy(data + 8, k_bf16, 8);
    int32_t ids[2] = {3, 4};
    memcpy(data + 16, ids, 8);
    write_raw_st(path, hdr, data, sizeof(data));
}

static void test_single(void) {
    char p[512];
    make_dir("single", 1);
    mkpath(p, sizeof(p), "single", "model.safetensors");
    vd_st_entry e[3] = {{"model.a", k_a, 2, {2, 3}}, {"model.b", k_b, 1, {3}}, {"lm_head.weight", k_c, 2, {4, 2}}};
    vd_safetensors_write_f32(p, e, 3, NULL, 0);
    mkpath(p, sizeof(p), "single", NULL);
    vd_weights *w = vd_weights_open(p);

    const cJSON *cfg = vd_weights_config(w);
    const cJSON *hs = cJSON_GetObjectItemCaseSensitive(cfg, "hidden_size");
    CHECK(cJSON_IsNumber(hs) && hs->valuedouble == 4, "config hidden_size");
    CHECK(strstr(vd_weights_config_path(w), "single/config.json") != NULL, "config path %s", vd_weights_config_path(w));
    CHECK(vd_weights_has(w, "model.a") && vd_weights_has(w, "model.b") && vd_weights_has(w, "lm_head.weight"), "has");
    CHECK(!vd_weights_has(w, "model.c") && !vd_weights_has(w, ""), "has (absent)");

    float got[8];
    int64_t s23[2] = {2, 3}, s3[1] = {3}, s42[2] = {4, 2};
    vd_weights_read_f32(w, "model.a", 2, s23, got);
    CHECK(same_bits(got, k_a, 6), "model.a");
    vd_weights_read_f32(w, "model.b", 1, s3, got);
    CHECK(same_bits(got, k_b, 3), "model.b");
    vd_weights_read_f32(w, "lm_head.weight", 2, s42, got);
    CHECK(same_bits(got, k_c, 8), "lm_head.weight");
    vd_weights_close(w);

    /* F16 / BF16 from hand-built bytes in a single model.safetensors */
    make_dir("half", 1);
    mkpath(p, sizeof(p), "half", "model.safetensors");
    write_half_file(p);
    mkpath(p, sizeof(p), "half", NULL);
    w = vd_weights_open(p);
    check_f16_bf16(w);
    vd_weights_close(w);
}

/* three shards: two fp32 ones and the hand-built F16/BF16/I32 one, with an index */
static void make_sharded(const char *sub, const char *index_json) {
    char p[512];
    make_dir(sub, 1);
    vd_st_entry e1[2] = {{"model.a", k_a, 2, {2, 3}}, {"model.b", k_b, 1, {3}}};
    vd_st_entry e2[1] = {{"lm_head.weight", k_c, 2, {4, 2}}};
    mkpath(p, sizeof(p), sub, "model-00001-of-00003.safetensors");
    vd_safetensors_write_f32(p, e1, 2, NULL, 0);
    mkpath(p, sizeof(p), sub, "model-00002-of-00003.safetensors");
    vd_safetensors_write_f32(p, e2, 1, NULL, 0);
    mkpath(p, sizeof(p), sub, "model-00003-of-00003.safetensors");
    write_half_file(p);
    mkpath(p, sizeof(p), sub, "model.safetensors.index.json");
    write_text(p, index_json);
}

static const char *k_index =
    "{\"metadata\": {\"total_size\": 84}, \"weight_map\": {"
    "\"model.a\": \"model-00001-of-00003.safetensors\", \"lm_head.weight\": \"model-00002-of-00003.safetensors\","
    "\"h\": \"model-00003-of-00003.safetensors\", \"model.b\": \"model-00001-of-00003.safetensors\","
    "\"bf\": \"model-00003-of-00003.safetensors\", \"ids\": \"model-00003-of-00003.safetensors\"}}";

static void test_sharded(void) {
    char p[512];
    make_sharded("sharded", k_index);
    mkpath(p, sizeof(p), "sharded", NULL);
    vd_weights *w = vd_weights_open(p);
    const char *names[] = {"model.a", "model.b", "lm_head.weight", "h", "bf", "ids"};
    for (int i = 0; i < 6; i++) CHECK(vd_weights_has(w, names[i]), "sharded has %s", names[i]);
    CHECK(!vd_weights_has(w, "model.c"), "sharded has (absent)");
    float got[8];
    int64_t s23[2] = {2, 3}, s3[1] = {3}, s42[2] = {4, 2};
    vd_weights_read_f32(w, "model.a", 2, s23, got);
    CHECK(same_bits(got, k_a, 6), "sharded model.a");
    vd_weights_read_f32(w, "model.b", 1, s3, got);
    CHECK(same_bits(got, k_b, 3), "sharded model.b");
    vd_weights_read_f32(w, "lm_head.weight", 2, s42, got);
    CHECK(same_bits(got, k_c, 8), "sharded lm_head.weight");
    check_f16_bf16(w);
    vd_weights_close(w);
}

/* ----------------------------------------------------------------------------------------- */
/* errors */

static char g_arg[512];

static void die_open(void *arg) {
    (void)arg;
    vd_weights_open(g_arg);
}

static void die_read_shape(void *arg) {
    (void)arg;
    vd_weights *w = vd_weights_open(g_arg);
    float got[8];
    int64_t s32[2] = {3, 2};
    vd_weights_read_f32(w, "model.a", 2, s32, got);
}

static void die_read_ndim(void *arg) {
    (void)arg;
    vd_weights *w = vd_weights_open(g_arg);
    float got[8];
    int64_t s6[1] = {6};
    vd_weights_read_f32(w, "model.a", 1, s6, got);
}

static void die_read_dtype(void *arg) {
    (void)arg;
    vd_weights *w = vd_weights_open(g_arg);
    float got[8];
    int64_t s2[1] = {2};
    vd_weights_read_f32(w, "ids", 1, s2, got);
}

static void die_read_missing(void *arg) {
    (void)arg;
    vd_weights *w = vd_weights_open(g_arg);
    float got[8];
    int64_t s2[1] = {2};
    vd_weights_read_f32(w, "model.nope", 1, s2, got);
}

static void test_errors(void) {
    char p[512], needle[600];

    /* no such path */
    mkpath(g_arg, sizeof(g_arg), "nonexistent", NULL);
    CHECK_DIES(die_open, NULL, "nonexistent: cannot open");

    /* a directory without config.json */
    make_dir("noconfig", 0);
    mkpath(p, sizeof(p), "noconfig", "model.safetensors");
    vd_st_entry e[1] = {{"model.a", k_a, 2, {2, 3}}};
    vd_safetensors_write_f32(p, e, 1, NULL, 0);
    mkpath(g_arg, sizeof(g_arg), "noconfig", NULL);
    mkpath(needle, sizeof(needle), "noconfig", "config.json: missing");
    CHECK_DIES(die_open, NULL, needle);

    /* config.json that is not JSON */
    make_dir("badconfig", 0);
    mkpath(p, sizeof(p), "badconfig", "config.json");
    write_text(p, "{\"hidden_size\": 4,");
    mkpath(g_arg, sizeof(g_arg), "badconfig", NULL);
    mkpath(needle, sizeof(needle), "badconfig", "config.json: not valid JSON");
    CHECK_DIES(die_open, NULL, needle);

    /* config.json but no weights */
    make_dir("noweights", 1);
    mkpath(g_arg, sizeof(g_arg), "noweights", NULL);
    mkpath(needle, sizeof(needle), "noweights", NULL);
    strcat(needle, ": neither model.safetensors nor model.safetensors.index.json");
    CHECK_DIES(die_open, NULL, needle);

    /* an index naming a shard that does not exist */
    make_sharded("missingshard",
                 "{\"weight_map\": {\"model.a\": \"model-00001-of-00003.safetensors\","
                 " \"model.z\": \"model-00009-of-00009.safetensors\"}}");
    mkpath(g_arg, sizeof(g_arg), "missingshard", NULL);
    mkpath(needle, sizeof(needle), "missingshard", "model-00009-of-00009.safetensors: missing (named by ");
    CHECK_DIES(die_open, NULL, needle);
    CHECK_DIES(die_open, NULL, "for tensor model.z");

    /* an index naming a tensor its shard does not hold */
    make_sharded("notinshard",
                 "{\"weight_map\": {\"model.a\": \"model-00001-of-00003.safetensors\","
                 " \"lm_head.weight\": \"model-00001-of-00003.safetensors\"}}");
    mkpath(g_arg, sizeof(g_arg), "notinshard", NULL);
    mkpath(needle, sizeof(needle), "notinshard", "model-00001-of-00003.safetensors: no tensor lm_head.weight");
    CHECK_DIES(die_open, NULL, needle);

    /* an index without weight_map, and one whose shard name leaves the directory */
    make_sharded("nomap", "{\"metadata\": {}}");
    mkpath(g_arg, sizeof(g_arg), "nomap", NULL);
    CHECK_DIES(die_open, NULL, "model.safetensors.index.json: missing or non-object \"weight_map\"");
    make_sharded("escape", "{\"weight_map\": {\"model.a\": \"../single/model.safetensors\"}}");
    mkpath(g_arg, sizeof(g_arg), "escape", NULL);
    CHECK_DIES(die_open, NULL, "leaves the model directory");

    /* a malformed shard: the safetensors reader's own message, naming the shard */
    make_sharded("badshard", k_index);
    mkpath(p, sizeof(p), "badshard", "model-00002-of-00003.safetensors");
    write_text(p, "abc");
    mkpath(g_arg, sizeof(g_arg), "badshard", NULL);
    mkpath(needle, sizeof(needle), "badshard", "model-00002-of-00003.safetensors: file is truncated");
    CHECK_DIES(die_open, NULL, needle);

    /* wrong shape, wrong rank, unsupported dtype, missing tensor: single file and sharded */
    mkpath(g_arg, sizeof(g_arg), "single", NULL);
    mkpath(needle, sizeof(needle), "single", "model.safetensors: tensor model.a: expected [3, 2], found [2, 3]");
    CHECK_DIES(die_read_shape, NULL, needle);
    CHECK_DIES(die_read_ndim, NULL, "tensor model.a: expected [6], found [2, 3]");
    mkpath(needle, sizeof(needle), "single", "model.safetensors: tensor model.nope: not found");
    CHECK_DIES(die_read_missing, NULL, needle);
    mkpath(g_arg, sizeof(g_arg), "sharded", NULL);
    mkpath(needle, sizeof(needle), "sharded",
           "model-00001-of-00003.safetensors: tensor model.a: expected [3, 2], found [2, 3]");
    CHECK_DIES(die_read_shape, NULL, needle);
    mkpath(needle, sizeof(needle), "sharded", "model-00003-of-00003.safetensors: tensor ids: dtype I32 is not supported");
    CHECK_DIES(die_read_dtype, NULL, needle);
    mkpath(needle, sizeof(needle), "sharded", "model.safetensors.index.json: tensor model.nope: not found");
    CHECK_DIES(die_read_missing, NULL, needle);

    /* a regular file that is neither a directory nor GGUF */
    mkpath(g_arg, sizeof(g_arg), "single", "config.json");
    CHECK_DIES(die_open, NULL, "config.json: neither a directory nor a GGUF file");
}

int main(void) {
    snprintf(g_dir, sizeof(g_dir), "/tmp/vd_test_weights_XXXXXX");
    if (!mkdtemp(g_dir)) { perror("mkdtemp"); return 1; }
    test_single();
    test_sharded();
    test_errors();
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_dir);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", g_dir);
    TEST_END();
}
