/* test_weights.c: vd_weights on Hugging Face directories written here: a single
 * model.safetensors, a sharded model with model.safetensors.index.json, F16/BF16 tensors from
 * hand-built bytes, and every malformed directory dying with one line naming the file; then a
 * hand-built GGUF (F32, F16, BF16, Q8_0, Q4_0, Q4_1; q/k un-permuted; synthesized config) and
 * malformed GGUF files. */
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

static void die_read_gguf_shape(void *arg) {
    (void)arg;
    vd_weights *w = vd_weights_open(g_arg);
    static float got[128];
    int64_t s[2] = {32, 4};
    vd_weights_read_f32(w, "model.layers.0.self_attn.q_proj.weight", 2, s, got);
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

/* ----------------------------------------------------------------------------------------- */
/* GGUF, hand-built (tests/python/test_gguf.py checks real writers, transformers and gguf-py;
 * this keeps the unit suite covering the format without Python) */

typedef struct {
    uint8_t *p;
    size_t n, cap;
} buf_t;

static void put(buf_t *b, const void *src, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 256;
        b->p = realloc(b->p, b->cap);
        if (!b->p) { perror("realloc"); exit(1); }
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}
static void put_u32(buf_t *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(buf_t *b, uint64_t v) { put(b, &v, 8); }
static void put_str(buf_t *b, const char *s) { put_u64(b, strlen(s)); put(b, s, strlen(s)); }
static void kv_u32(buf_t *b, const char *k, uint32_t v) { put_str(b, k); put_u32(b, 4); put_u32(b, v); }
static void kv_f32(buf_t *b, const char *k, float v) { put_str(b, k); put_u32(b, 6); put(b, &v, 4); }
static void kv_str(buf_t *b, const char *k, const char *v) { put_str(b, k); put_u32(b, 8); put_str(b, v); }

typedef struct {
    const char *name;
    uint32_t type, n_dims;
    uint64_t ne[2];
    const void *data;
    size_t nbytes;
} gt_t;

/* [header][kv][tensor infos][pad to 32][tensor data, each padded to 32] */
static void write_gguf(const char *path, const char *arch, const gt_t *ts, int nt) {
    buf_t b = {0};
    put(&b, "GGUF", 4);
    put_u32(&b, 3);
    put_u64(&b, (uint64_t)nt);
    put_u64(&b, 10);
    kv_str(&b, "general.architecture", arch);
    kv_u32(&b, "llama.block_count", 1);
    kv_u32(&b, "llama.embedding_length", 32);
    kv_u32(&b, "llama.feed_forward_length", 2);
    kv_u32(&b, "llama.attention.head_count", 1);
    kv_u32(&b, "llama.context_length", 64);
    kv_f32(&b, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
    /* tokenizer.ggml.tokens, a string array, gives the vocabulary size (no llama.vocab_size) */
    put_str(&b, "tokenizer.ggml.tokens");
    put_u32(&b, 9);
    put_u32(&b, 8);
    put_u64(&b, 3);
    put_str(&b, "a");
    put_str(&b, "b");
    put_str(&b, "c");
    kv_u32(&b, "tokenizer.ggml.bos_token_id", 1);
    /* an array of arrays of u16: skipped, but walked with bounds checks */
    put_str(&b, "x.nested");
    put_u32(&b, 9);
    put_u32(&b, 9);
    put_u64(&b, 2);
    for (int i = 0; i < 2; i++) {
        put_u32(&b, 2);
        put_u64(&b, 3);
        uint16_t v[3] = {1, 2, 3};
        put(&b, v, 6);
    }
    uint64_t off = 0;
    for (int i = 0; i < nt; i++) {
        put_str(&b, ts[i].name);
        put_u32(&b, ts[i].n_dims);
        for (uint32_t d = 0; d < ts[i].n_dims; d++) put_u64(&b, ts[i].ne[d]);
        put_u32(&b, ts[i].type);
        put_u64(&b, off);
        off += (ts[i].nbytes + 31) / 32 * 32;
    }
    static const uint8_t zeros[32] = {0};
    put(&b, zeros, (32 - b.n % 32) % 32);
    for (int i = 0; i < nt; i++) {
        put(&b, ts[i].data, ts[i].nbytes);
        put(&b, zeros, (32 - ts[i].nbytes % 32) % 32);
    }
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(b.p, 1, b.n, f) != b.n || fclose(f) != 0) { fprintf(stderr, "%s: write failed\n", path); exit(1); }
    free(b.p);
}

/* The tensors of a one-layer "model" (hidden 32, one head, q/k with 4 rows so head_dim / 2 = 2
 * and the RoPE permutation is not the identity), each row distinguishable. */
static float g_embd[3 * 32];
static uint8_t g_q8[4 * 34], g_q40[4 * 18], g_q41[2 * 20], g_f16[8], g_bf16[8];

static void make_gguf_tensors(gt_t *ts) {
    for (int i = 0; i < 96; i++) g_embd[i] = (float)i * 0.25f - 3.0f;
    for (int r = 0; r < 4; r++) { /* Q8_0: d = 0.5 (f16 0x3800), q = 10 r + j - 16 */
        uint8_t *blk = g_q8 + 34 * r;
        blk[0] = 0x00, blk[1] = 0x38;
        for (int j = 0; j < 32; j++) blk[2 + j] = (uint8_t)(int8_t)(10 * r + j - 16);
    }
    for (int r = 0; r < 4; r++) { /* Q4_0: d = 0.25 * (r + 1), nibbles j and 15 - j */
        uint8_t *blk = g_q40 + 18 * r;
        const uint16_t d[4] = {0x3400, 0x3800, 0x3a00, 0x3c00}; /* 0.25 0.5 0.75 1 */
        memcpy(blk, &d[r], 2);
        for (int j = 0; j < 16; j++) blk[2 + j] = (uint8_t)(j | ((15 - j) << 4));
    }
    for (int r = 0; r < 2; r++) { /* Q4_1: d = 0.5, m = -1 - r */
        uint8_t *blk = g_q41 + 20 * r;
        const uint16_t d = 0x3800, m[2] = {0xbc00, 0xc000}; /* -1, -2 */
        memcpy(blk, &d, 2);
        memcpy(blk + 2, &m[r], 2);
        for (int j = 0; j < 16; j++) blk[4 + j] = (uint8_t)(j | ((15 - j) << 4));
    }
    memcpy(g_f16, k_f16, 8);
    memcpy(g_bf16, k_bf16, 8);
    const gt_t t[6] = {
        {"token_embd.weight", 0, 2, {32, 3}, g_embd, sizeof(g_embd)},
        {"blk.0.attn_q.weight", 8, 2, {32, 4}, g_q8, sizeof(g_q8)},
        {"blk.0.attn_k.weight", 2, 2, {32, 4}, g_q40, sizeof(g_q40)},
        {"blk.0.ffn_down.weight", 3, 2, {32, 2}, g_q41, sizeof(g_q41)},
        {"blk.0.attn_norm.weight", 1, 1, {4, 0}, g_f16, 8},
        {"output_norm.weight", 30, 1, {4, 0}, g_bf16, 8},
    };
    memcpy(ts, t, sizeof(t));
}

static void test_gguf(void) {
    char p[512];
    gt_t ts[6];
    make_gguf_tensors(ts);
    mkpath(p, sizeof(p), "tiny.gguf", NULL);
    write_gguf(p, "llama", ts, 6);
    vd_weights *w = vd_weights_open(p);
    CHECK(strcmp(vd_weights_config_path(w), p) == 0, "config path of a GGUF is the file");

    const cJSON *cfg = vd_weights_config(w);
    struct { const char *key; double want; } nums[] = {
        {"hidden_size", 32}, {"intermediate_size", 2}, {"num_hidden_layers", 1}, {"num_attention_heads", 1},
        {"num_key_value_heads", 1}, {"head_dim", 32}, {"max_position_embeddings", 64}, {"vocab_size", 3},
        {"rope_theta", 10000}, {"rms_norm_eps", (double)1e-5f}, {"bos_token_id", 1},
    };
    for (size_t i = 0; i < sizeof(nums) / sizeof(nums[0]); i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, nums[i].key);
        CHECK(cJSON_IsNumber(v) && v->valuedouble == nums[i].want, "config %s", nums[i].key);
    }
    CHECK(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(cfg, "tie_word_embeddings")), "tied without output.weight");
    CHECK(!cJSON_GetObjectItemCaseSensitive(cfg, "eos_token_id"), "no eos_token_id in the metadata, none in the config");
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(cfg, "model_type");
    CHECK(cJSON_IsString(mt) && strcmp(mt->valuestring, "llama") == 0, "model_type");

    CHECK(vd_weights_has(w, "model.embed_tokens.weight") && vd_weights_has(w, "model.norm.weight") &&
              vd_weights_has(w, "model.layers.0.self_attn.q_proj.weight") &&
              vd_weights_has(w, "model.layers.0.input_layernorm.weight"), "HF names");
    CHECK(!vd_weights_has(w, "lm_head.weight") && !vd_weights_has(w, "token_embd.weight"), "no GGUF names, no head");

    static float got[128];
    int64_t s_emb[2] = {3, 32}, s_q[2] = {4, 32}, s_down[2] = {2, 32}, s4[1] = {4};
    vd_weights_read_f32(w, "model.embed_tokens.weight", 2, s_emb, got);
    CHECK(same_bits(got, g_embd, 96), "F32 embedding");
    /* stored rows 0 1 2 3 are HF rows 0 2 1 3 (one head, head_dim / 2 = 2) */
    const int hf_from_stored[4] = {0, 2, 1, 3};
    vd_weights_read_f32(w, "model.layers.0.self_attn.q_proj.weight", 2, s_q, got);
    int ok = 1;
    for (int r = 0; r < 4; r++)
        for (int j = 0; j < 32; j++) ok &= got[hf_from_stored[r] * 32 + j] == (float)(10 * r + j - 16) * 0.5f;
    CHECK(ok, "Q8_0 q_proj dequantized and un-permuted");
    vd_weights_read_f32(w, "model.layers.0.self_attn.k_proj.weight", 2, s_q, got);
    ok = 1;
    for (int r = 0; r < 4; r++) {
        float d = 0.25f * (float)(r + 1);
        for (int j = 0; j < 16; j++) {
            ok &= got[hf_from_stored[r] * 32 + j] == (float)(j - 8) * d;
            ok &= got[hf_from_stored[r] * 32 + 16 + j] == (float)(7 - j) * d;
        }
    }
    CHECK(ok, "Q4_0 k_proj dequantized and un-permuted");
    vd_weights_read_f32(w, "model.layers.0.mlp.down_proj.weight", 2, s_down, got);
    ok = 1;
    for (int r = 0; r < 2; r++)
        for (int j = 0; j < 16; j++) {
            ok &= got[r * 32 + j] == (float)j * 0.5f + (float)(-1 - r);
            ok &= got[r * 32 + 16 + j] == (float)(15 - j) * 0.5f + (float)(-1 - r);
        }
    CHECK(ok, "Q4_1 down_proj (not permuted)");
    vd_weights_read_f32(w, "model.layers.0.input_layernorm.weight", 1, s4, got);
    const float want_h[4] = {1.0f, -2.0f, 0.5f, 5.9604644775390625e-08f};
    CHECK(same_bits(got, want_h, 4), "F16 norm");
    vd_weights_read_f32(w, "model.norm.weight", 1, s4, got);
    ok = 1;
    for (int i = 0; i < 4; i++) {
        uint32_t gb;
        memcpy(&gb, &got[i], 4);
        ok &= gb == (uint32_t)k_bf16[i] << 16;
    }
    CHECK(ok, "BF16 norm");
    vd_weights_close(w);
}

static void test_gguf_errors(void) {
    char p[512], needle[700];
    gt_t ts[6];
    make_gguf_tensors(ts);

    /* truncated: the last tensor's data is cut */
    mkpath(p, sizeof(p), "tiny.gguf", NULL);
    FILE *f = fopen(p, "rb");
    static uint8_t whole[1 << 16];
    size_t n = f ? fread(whole, 1, sizeof(whole), f) : 0;
    if (f) fclose(f);
    CHECK(n > 100 && n < sizeof(whole), "read tiny.gguf back");
    mkpath(g_arg, sizeof(g_arg), "cut.gguf", NULL);
    f = fopen(g_arg, "wb");
    if (!f || fwrite(whole, 1, n - 40, f) != n - 40 || fclose(f) != 0) { perror(g_arg); exit(1); }
    snprintf(needle, sizeof(needle), "%s: tensor output_norm.weight (BF16, 8 bytes", g_arg);
    CHECK_DIES(die_open, NULL, needle);
    CHECK_DIES(die_open, NULL, "file truncated or corrupt");
    /* cut inside the metadata */
    f = fopen(g_arg, "wb");
    if (!f || fwrite(whole, 1, 150, f) != 150 || fclose(f) != 0) { perror(g_arg); exit(1); }
    snprintf(needle, sizeof(needle), "%s: file is truncated", g_arg);
    CHECK_DIES(die_open, NULL, needle);

    /* bad magic, with the .gguf suffix; and without it, a magic-less file is not GGUF at all */
    whole[3] = 'X';
    mkpath(g_arg, sizeof(g_arg), "magic.gguf", NULL);
    f = fopen(g_arg, "wb");
    if (!f || fwrite(whole, 1, n, f) != n || fclose(f) != 0) { perror(g_arg); exit(1); }
    CHECK_DIES(die_open, NULL, "magic.gguf: bad magic");
    whole[3] = 'F';

    /* a GGUF without the suffix is recognised by its magic */
    mkpath(p, sizeof(p), "tiny.bin", NULL);
    f = fopen(p, "wb");
    if (!f || fwrite(whole, 1, n, f) != n || fclose(f) != 0) { perror(p); exit(1); }
    vd_weights *w = vd_weights_open(p);
    CHECK(vd_weights_has(w, "model.norm.weight"), "GGUF by magic");
    vd_weights_close(w);

    /* another architecture */
    mkpath(g_arg, sizeof(g_arg), "qwen.gguf", NULL);
    write_gguf(g_arg, "qwen2", ts, 6);
    CHECK_DIES(die_open, NULL, "qwen.gguf: general.architecture is \"qwen2\" (only \"llama\"");

    /* a type ggml defines that we do not convert (Q6_K: 256 elements in 210 bytes) */
    static uint8_t q6k[210];
    gt_t bad[2] = {ts[0], {"blk.0.ffn_up.weight", 14, 2, {256, 1}, q6k, sizeof(q6k)}};
    mkpath(g_arg, sizeof(g_arg), "q6k.gguf", NULL);
    write_gguf(g_arg, "llama", bad, 2);
    CHECK_DIES(die_open, NULL, "q6k.gguf: tensor blk.0.ffn_up.weight has type Q6_K (14), which is not supported");
    /* a type number ggml does not define */
    bad[1].type = 77;
    mkpath(g_arg, sizeof(g_arg), "t77.gguf", NULL);
    write_gguf(g_arg, "llama", bad, 2);
    CHECK_DIES(die_open, NULL, "t77.gguf: tensor blk.0.ffn_up.weight has ggml type 77");

    /* wrong shape asked of a GGUF tensor: HF's (out, in), not GGUF's ne order */
    mkpath(g_arg, sizeof(g_arg), "tiny.gguf", NULL);
    CHECK_DIES(die_read_gguf_shape, NULL, "tiny.gguf: tensor model.layers.0.self_attn.q_proj.weight: expected [32, 4], found [4, 32]");
}

int main(void) {
    snprintf(g_dir, sizeof(g_dir), "/tmp/vd_test_weights_XXXXXX");
    if (!mkdtemp(g_dir)) { perror("mkdtemp"); return 1; }
    test_single();
    test_sharded();
    test_errors();
    test_gguf();
    test_gguf_errors();
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_dir);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", g_dir);
    TEST_END();
}
