/* test_safetensors.c: writer/reader round trip, F16/BF16 conversion from hand-built files
 * (byte layouts as the Python safetensors package writes them), and every malformed file
 * dying with its path and what was wrong. */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test_util.h"
#include "vera/common.h"
#include "vera/safetensors.h"

static char g_dir[256];

static void path_in_dir(char *out, size_t cap, const char *name) { snprintf(out, cap, "%s/%s", g_dir, name); }

static uint32_t f32_bits(float x) {
    uint32_t b;
    memcpy(&b, &x, sizeof(b));
    return b;
}

/* Writes [u64 header_len][header][data] exactly as given (no padding: tests unaligned data). */
static void write_raw(const char *path, uint64_t header_len, const char *header, size_t header_bytes,
                      const void *data, size_t data_bytes) {
    FILE *f = fopen(path, "wb");
    if (!f) { perror(path); exit(1); }
    int ok = fwrite(&header_len, 8, 1, f) == 1;
    if (header_bytes) ok &= fwrite(header, 1, header_bytes, f) == header_bytes;
    if (data_bytes) ok &= fwrite(data, 1, data_bytes, f) == data_bytes;
    ok &= fclose(f) == 0;
    if (!ok) { fprintf(stderr, "%s: write failed\n", path); exit(1); }
}

static void write_header_file(const char *path, const char *header, const void *data, size_t data_bytes) {
    write_raw(path, strlen(header), header, strlen(header), data, data_bytes);
}

static void test_round_trip(void) {
    char path[512];
    path_in_dir(path, sizeof(path), "rt.safetensors");
    float a[6] = {1.0f, -2.5f, 3.25f, 1e-30f, -0.0f, 65504.0f};
    float b[3] = {0.1f, 0.2f, 0.3f};
    float s[1] = {42.0f};
    uint32_t nanbits = 0x7fc00123u; /* a NaN with a payload must survive untouched */
    memcpy(&b[2], &nanbits, 4);
    vd_st_entry e[4] = {
        {"layer.0.weight", a, 2, {2, 3}},
        {"bias \"quoted\"", b, 1, {3}},
        {"scalar", s, 0, {0}},
        {"empty", NULL, 2, {0, 5}},
    };
    const char *meta[] = {"format", "pt", "note", "a\\b"};
    vd_safetensors_write_f32(path, e, 4, meta, 2);

    /* header length a multiple of 8 so the data section is aligned, as the reference pads it */
    FILE *f = fopen(path, "rb");
    uint64_t hl = 0;
    CHECK(f && fread(&hl, 8, 1, f) == 1, "cannot read back %s", path);
    char *hdr = calloc(hl + 1, 1);
    CHECK(hdr && fread(hdr, 1, hl, f) == hl, "short header");
    if (f) fclose(f);
    CHECK(hl % 8 == 0, "header length %llu not a multiple of 8", (unsigned long long)hl);
    CHECK(strstr(hdr, "\"__metadata__\":{\"format\":\"pt\",\"note\":\"a\\\\b\"}") != NULL, "metadata missing: %s", hdr);
    free(hdr);

    vd_safetensors st;
    vd_safetensors_open(&st, path);
    CHECK(st.n_tensors == 4, "n_tensors %d, want 4 (__metadata__ must not count)", st.n_tensors);
    CHECK(((uintptr_t)st.data % 8) == 0, "data section not 8-byte aligned");
    const vd_st_tensor *t = vd_safetensors_find(&st, "layer.0.weight");
    CHECK(t && t->dtype == VD_DTYPE_F32 && strcmp(t->dtype_name, "F32") == 0, "layer.0.weight dtype");
    CHECK(t && t->ndim == 2 && t->shape[0] == 2 && t->shape[1] == 3, "layer.0.weight shape");
    CHECK(t && t->begin == 0 && t->end == 24, "layer.0.weight offsets");
    float got[6];
    if (t) {
        vd_safetensors_read_f32(&st, t, got);
        for (int i = 0; i < 6; i++) CHECK(f32_bits(got[i]) == f32_bits(a[i]), "a[%d] bits differ", i);
    }
    t = vd_safetensors_find(&st, "bias \"quoted\"");
    CHECK(t && t->ndim == 1 && t->shape[0] == 3, "quoted name lost or bad shape");
    if (t) {
        vd_safetensors_read_f32(&st, t, got);
        for (int i = 0; i < 3; i++) CHECK(f32_bits(got[i]) == f32_bits(b[i]), "b[%d] bits differ", i);
    }
    t = vd_safetensors_find(&st, "scalar");
    CHECK(t && t->ndim == 0 && vd_st_tensor_numel(t) == 1, "scalar shape");
    if (t) {
        vd_safetensors_read_f32(&st, t, got);
        CHECK(got[0] == 42.0f, "scalar value %g", got[0]);
    }
    t = vd_safetensors_find(&st, "empty");
    CHECK(t && vd_st_tensor_numel(t) == 0 && t->begin == t->end, "empty tensor");
    CHECK(vd_safetensors_find(&st, "__metadata__") == NULL, "__metadata__ listed as a tensor");
    CHECK(vd_safetensors_find(&st, "nope") == NULL, "found a tensor that does not exist");
    CHECK(strcmp(st.tensors[0].name, "layer.0.weight") == 0 && strcmp(st.tensors[3].name, "empty") == 0,
          "header order not kept");
    vd_safetensors_close(&st);
    unlink(path);

    /* the padding for every header length mod 8 (names of 1..8 characters) */
    for (int len = 1; len <= 8; len++) {
        char name[16];
        memset(name, 'n', (size_t)len);
        name[len] = 0;
        vd_st_entry one = {name, a, 1, {3}};
        vd_safetensors_write_f32(path, &one, 1, NULL, 0);
        f = fopen(path, "rb");
        hl = 0;
        CHECK(f && fread(&hl, 8, 1, f) == 1, "cannot read back %s", path);
        if (f) fclose(f);
        CHECK(hl % 8 == 0, "name length %d: header length %llu not a multiple of 8", len, (unsigned long long)hl);
        vd_safetensors_open(&st, path);
        vd_safetensors_read_f32(&st, &st.tensors[0], got);
        CHECK(got[2] == a[2], "name length %d: value lost", len);
        vd_safetensors_close(&st);
    }
    unlink(path);
}

/* F16 and BF16 as torch/safetensors store them (little-endian), covering zero, normal,
 * subnormal, max, inf and NaN. The data section starts at an odd offset (unpadded header). */
/* integer tensors (VB-LoRA's top-k indices, PEFT's U8 / I16 / I32 / I64) beside an F32 one */
static void test_int_types(void) {
    char path[512];
    path_in_dir(path, sizeof(path), "ints.safetensors");
    const uint8_t u8[3] = {0, 200, 255};
    const int16_t i16[2] = {-32768, 32767};
    const int32_t i32[2] = {-7, 2147483647};
    const int64_t i64[2] = {-1, (int64_t)1 << 40};
    const float f[2] = {1.5f, -2.0f};
    vd_st_entry e[5] = {{"u8", NULL, 1, {3}, "U8", u8},  {"f", f, 1, {2}, NULL, NULL},
                        {"i16", NULL, 1, {2}, "I16", i16}, {"i32", NULL, 2, {1, 2}, "I32", i32},
                        {"i64", NULL, 1, {2}, "I64", i64}};
    vd_safetensors_write_f32(path, e, 5, NULL, 0);
    vd_safetensors st;
    vd_safetensors_open(&st, path);
    int64_t got[3];
    const int64_t want_u8[3] = {0, 200, 255}, want_i16[2] = {-32768, 32767}, want_i32[2] = {-7, 2147483647};
    const struct { const char *name, *dtype; const int64_t *want; int n; } cases[4] = {
        {"u8", "U8", want_u8, 3}, {"i16", "I16", want_i16, 2}, {"i32", "I32", want_i32, 2}, {"i64", "I64", i64, 2}};
    for (int c = 0; c < 4; c++) {
        const vd_st_tensor *t = vd_safetensors_find(&st, cases[c].name);
        CHECK(t && strcmp(t->dtype_name, cases[c].dtype) == 0, "%s stored as %s", cases[c].name, cases[c].dtype);
        if (!t) continue;
        vd_safetensors_read_int(&st, t, got);
        for (int i = 0; i < cases[c].n; i++)
            CHECK(got[i] == cases[c].want[i], "%s[%d] = %lld", cases[c].name, i, (long long)got[i]);
    }
    float fg[2];
    vd_safetensors_read_f32(&st, vd_safetensors_find(&st, "f"), fg);
    CHECK(fg[0] == 1.5f && fg[1] == -2.0f, "F32 beside integers");
    vd_safetensors_close(&st);
}

static void test_half_types(void) {
    char path[512];
    path_in_dir(path, sizeof(path), "half.safetensors");
    static const uint16_t f16[11] = {0x3c00, 0xc000, 0x0001, 0x03ff, 0x0400, 0x7bff, 0x7c00, 0xfc00, 0x8000, 0x7e01, 0xfc01};
    static const uint32_t f16_want[11] = {
        0x3f800000, /* 1.0 */
        0xc0000000, /* -2.0 */
        0x33800000, /* 2^-24, smallest subnormal */
        0x387fc000, /* 1023 * 2^-24, largest subnormal */
        0x38800000, /* 2^-14, smallest normal */
        0x477fe000, /* 65504 */
        0x7f800000, /* +inf */
        0xff800000, /* -inf */
        0x80000000, /* -0 */
        0x7fc02000, /* quiet NaN, payload kept */
        0xffc02000, /* signalling NaN: quieted, as torch's .float() (F16C) does */
    };
    static const uint16_t bf16[6] = {0x3f80, 0xc040, 0x0001, 0x7f80, 0xffc1, 0x8000};
    static const uint32_t bf16_want[6] = {0x3f800000, 0xc0400000, 0x00010000, 0x7f800000, 0xffc10000, 0x80000000};
    static const int32_t ints[2] = {7, -7};
    uint8_t data[22 + 12 + 8];
    memcpy(data, f16, 22);
    memcpy(data + 22, bf16, 12);
    memcpy(data + 34, ints, 8);
    const char *header = "{\"__metadata__\":{\"format\":\"pt\"},"
                         "\"h\":{\"dtype\":\"F16\",\"shape\":[11],\"data_offsets\":[0,22]},"
                         "\"b\":{\"dtype\":\"BF16\",\"shape\":[6],\"data_offsets\":[22,34]},"
                         "\"i\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[34,42]}}";
    CHECK(strlen(header) % 8 != 0, "test wants an unaligned data section");
    write_header_file(path, header, data, sizeof(data));

    vd_safetensors st;
    vd_safetensors_open(&st, path);
    CHECK(st.n_tensors == 3, "n_tensors %d", st.n_tensors);
    const vd_st_tensor *h = vd_safetensors_find(&st, "h");
    const vd_st_tensor *b = vd_safetensors_find(&st, "b");
    const vd_st_tensor *i = vd_safetensors_find(&st, "i");
    CHECK(h && h->dtype == VD_DTYPE_F16, "F16 dtype");
    CHECK(b && b->dtype == VD_DTYPE_BF16, "BF16 dtype");
    CHECK(i && i->dtype == VD_DTYPE_OTHER && strcmp(i->dtype_name, "I32") == 0, "I32 dtype");
    float out[11];
    if (h) {
        vd_safetensors_read_f32(&st, h, out);
        for (int k = 0; k < 11; k++)
            CHECK(f32_bits(out[k]) == f16_want[k], "F16 0x%04x -> 0x%08x, want 0x%08x", f16[k], f32_bits(out[k]), f16_want[k]);
    }
    if (b) {
        vd_safetensors_read_f32(&st, b, out);
        for (int k = 0; k < 6; k++)
            CHECK(f32_bits(out[k]) == bf16_want[k], "BF16 0x%04x -> 0x%08x, want 0x%08x", bf16[k], f32_bits(out[k]), bf16_want[k]);
    }
    vd_safetensors_close(&st);
}

/* Exhaustive F16 check: every finite half converts to the value ldexp gives (checked once against
 * torch: all 65536 results equal torch.float16 -> .float() bit for bit). */
static void test_f16_all(void) {
    char path[512];
    path_in_dir(path, sizeof(path), "f16all.safetensors");
    static uint16_t all[65536];
    for (uint32_t k = 0; k < 65536; k++) all[k] = (uint16_t)k;
    const char *header = "{\"x\":{\"dtype\":\"F16\",\"shape\":[65536],\"data_offsets\":[0,131072]}}";
    write_header_file(path, header, all, sizeof(all));
    vd_safetensors st;
    vd_safetensors_open(&st, path);
    static float out[65536];
    vd_safetensors_read_f32(&st, &st.tensors[0], out);
    int bad = 0;
    for (uint32_t k = 0; k < 65536; k++) {
        int e = (k >> 10) & 0x1f, m = k & 0x3ff;
        double sign = (k & 0x8000) ? -1.0 : 1.0;
        if (e == 31) {
            /* NaN: sign and payload kept, quiet bit set (what torch's .float() gives) */
            uint32_t nan_bits = ((k & 0x8000u) << 16) | 0x7fc00000u | ((uint32_t)m << 13);
            bad += m ? f32_bits(out[k]) != nan_bits : !(isinf(out[k]) && (out[k] < 0) == (sign < 0));
            continue;
        }
        double want = e ? sign * ldexp(1024 + m, e - 25) : sign * ldexp(m, -24);
        bad += (out[k] != (float)want) || (signbit(out[k]) != 0) != (sign < 0);
    }
    CHECK(bad == 0, "%d of 65536 half values converted wrongly", bad);
    vd_safetensors_close(&st);
    unlink(path);
}

/* ---- malformed files: each must die naming the file and the problem ---- */

static void open_only(void *arg) {
    vd_safetensors st;
    vd_safetensors_open(&st, (const char *)arg);
    vd_safetensors_close(&st);
}

static void read_i32_as_f32(void *arg) {
    vd_safetensors st;
    vd_safetensors_open(&st, (const char *)arg);
    float out[2];
    vd_safetensors_read_f32(&st, vd_safetensors_find(&st, "i"), out);
}

/* Writes a file with `header` (and data_bytes zero bytes of data) and checks that opening it
 * dies with "<path>: <fragment>". */
static void expect_bad_header(const char *name, const char *header, size_t data_bytes, const char *fragment) {
    char path[512], needle[1024];
    path_in_dir(path, sizeof(path), name);
    uint8_t *zeros = calloc(data_bytes ? data_bytes : 1, 1);
    write_header_file(path, header, zeros, data_bytes);
    free(zeros);
    snprintf(needle, sizeof(needle), "%s: %s", path, fragment);
    CHECK_DIES(open_only, path, needle);
}

static void test_malformed(void) {
    char path[512], needle[1024];
    /* shorter than the 8-byte length field */
    path_in_dir(path, sizeof(path), "tiny.safetensors");
    FILE *f = fopen(path, "wb");
    if (!f || fwrite("abc", 1, 3, f) != 3 || fclose(f) != 0) { perror(path); exit(1); }
    snprintf(needle, sizeof(needle), "%s: file is truncated", path);
    CHECK_DIES(open_only, path, needle);

    /* empty file */
    path_in_dir(path, sizeof(path), "empty.safetensors");
    write_raw(path, 0, NULL, 0, NULL, 0);
    if (truncate(path, 0) != 0) { perror(path); exit(1); }
    snprintf(needle, sizeof(needle), "%s: file is truncated", path);
    CHECK_DIES(open_only, path, needle);

    /* missing file */
    path_in_dir(path, sizeof(path), "does-not-exist.safetensors");
    snprintf(needle, sizeof(needle), "%s: cannot open", path);
    CHECK_DIES(open_only, path, needle);

    /* header length beyond the file (a truncated download) */
    path_in_dir(path, sizeof(path), "hlen.safetensors");
    const char *h = "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
    write_raw(path, 4096, h, strlen(h), "\0\0\0\0", 4);
    snprintf(needle, sizeof(needle), "%s: header length 4096 runs past the end", path);
    CHECK_DIES(open_only, path, needle);

    /* absurd header length (garbage in the length field) and zero */
    path_in_dir(path, sizeof(path), "hhuge.safetensors");
    write_raw(path, 0x4141414141414141ULL, h, strlen(h), NULL, 0);
    snprintf(needle, sizeof(needle), "%s: header length", path);
    CHECK_DIES(open_only, path, needle);
    path_in_dir(path, sizeof(path), "hzero.safetensors");
    write_raw(path, 0, h, strlen(h), NULL, 0);
    snprintf(needle, sizeof(needle), "%s: header length 0 is not sane", path);
    CHECK_DIES(open_only, path, needle);

    /* a truncated data section: the tensor's end offset is past the data */
    path_in_dir(path, sizeof(path), "short.safetensors");
    write_header_file(path, "{\"x\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", "\0\0\0\0\0\0\0\0", 8);
    snprintf(needle, sizeof(needle), "%s: tensor x: data_offsets [0, 16] outside the data section of 8 bytes", path);
    CHECK_DIES(open_only, path, needle);

    expect_bad_header("offs.safetensors", "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[100,104]}}", 8,
                      "tensor x: data_offsets [100, 104] outside");
    expect_bad_header("rev.safetensors", "{\"x\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,4]}}", 8,
                      "tensor x: data_offsets [8, 4] outside");
    expect_bad_header("size.safetensors", "{\"x\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 16,
                      "tensor x: data_offsets span 8 bytes but shape and dtype F32 need 12");
    expect_bad_header("size16.safetensors", "{\"x\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[0,16]}}", 16,
                      "tensor x: data_offsets span 16 bytes but shape and dtype BF16 need 8");
    expect_bad_header("ovf.safetensors",
                      "{\"x\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,0]}}", 8,
                      "tensor x: data_offsets span 0 bytes");
    expect_bad_header("json.safetensors", "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],", 8, "header is not valid JSON");
    expect_bad_header("trail.safetensors", "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}  xyz", 8,
                      "header has bytes after the JSON object at byte 56");
    expect_bad_header("notobj.safetensors", "[1, 2, 3]", 8, "header is not a JSON object");
    expect_bad_header("dtype.safetensors", "{\"x\":{\"dtype\":\"F99\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8,
                      "tensor x: unknown dtype \"F99\"");
    expect_bad_header("nodtype.safetensors", "{\"x\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 8,
                      "tensor x: missing or non-string \"dtype\"");
    expect_bad_header("negshape.safetensors", "{\"x\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 8,
                      "tensor x: shape[0] is not a non-negative integer");
    expect_bad_header("fracshape.safetensors", "{\"x\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 8,
                      "tensor x: shape[0] is not a non-negative integer");
    expect_bad_header("noshape.safetensors", "{\"x\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 8,
                      "tensor x: missing or non-array \"shape\"");
    expect_bad_header("badoffs.safetensors", "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 8,
                      "tensor x: bad \"data_offsets\"");
    expect_bad_header("negoffs.safetensors", "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 8,
                      "tensor x: bad \"data_offsets\"");
    expect_bad_header("entry.safetensors", "{\"x\":[1,2]}", 8, "tensor x: header entry is not an object");
    expect_bad_header("dup.safetensors",
                      "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                      "\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                      8, "tensor x appears twice");

    /* a valid file whose tensor is not a float type: reading it as fp32 names the tensor */
    path_in_dir(path, sizeof(path), "half.safetensors");
    snprintf(needle, sizeof(needle), "%s: tensor i has dtype I32 (expected F32, F16 or BF16)", path);
    CHECK_DIES(read_i32_as_f32, path, needle);
}

static void open_only_in_5s(void *arg) {
    alarm(5); /* a FIFO opened for reading would block the child for good */
    open_only(arg);
}

/* Names echoed from a hostile header are escaped, and special files are refused unopened. */
static void test_hostile(void) {
    char path[512], needle[1024];
    /* raw bytes and a terminal escape in a tensor name, and no "dtype": printed as \xNN */
    path_in_dir(path, sizeof(path), "garbage_name.safetensors");
    const char *h = "{\"\xff\xfe\x1b[31m__\":{\"shape\":[1],\"data_offsets\":[0,4]}}";
    write_raw(path, strlen(h), h, strlen(h), "\0\0\0\0", 4);
    snprintf(needle, sizeof(needle), "%s: tensor \\xff\\xfe\\x1b[31m__: missing or non-string \"dtype\"", path);
    CHECK_DIES(open_only, path, needle);

    path_in_dir(path, sizeof(path), "fifo.safetensors");
    if (mkfifo(path, 0644) != 0) { perror(path); exit(1); }
    snprintf(needle, sizeof(needle), "%s: not a regular file (it is a FIFO", path);
    CHECK_DIES(open_only_in_5s, path, needle);
    unlink(path);

    /* the escaping helper itself */
    char out[256];
    struct { const char *in, *want; } cases[] = {
        {"plain", "plain"},
        {"a\x01" "b", "a\\x01b"},
        {"tab\tnew\nline", "tab new line"},
        {"caf\xc3\xa9 \xe8\xa8\xad\xe5\xae\x9a", "caf\xc3\xa9 \xe8\xa8\xad\xe5\xae\x9a"}, /* valid UTF-8 stays */
        {"cut \xc3", "cut \\xc3"},                                     /* a truncated sequence */
        {"over\xc0\xaf", "over\\xc0\\xaf"},                          /* an overlong '/' */
        {"c1 \xc2\x9b" "31m", "c1 \\xc2\\x9b31m"},                   /* C1 CSI */
        {"del\x7f", "del\\x7f"},
        {"\xed\xa0\x80", "\\xed\\xa0\\x80"},                       /* a UTF-16 surrogate */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        vd_escape_printable(out, sizeof(out), cases[i].in, strlen(cases[i].in));
        CHECK(strcmp(out, cases[i].want) == 0, "escape case %zu: got '%s', want '%s'", i, out, cases[i].want);
    }
    /* never past cap, always terminated */
    vd_escape_printable(out, 6, "\x01\x02\x03", 3);
    CHECK(strcmp(out, "\\x01") == 0, "escape into 6 bytes: got '%s'", out);
    CHECK(vd_text_problem("ok\r\n\tfine", 9, 1) == 9, "text with newlines and a tab");
    CHECK(vd_text_problem("ok\r\n", 4, 0) == 2, "a CR is a control character without allow_newlines");
    CHECK(vd_text_problem("ab\0cd", 5, 1) == 2, "a NUL byte");
}

int main(void) {
    snprintf(g_dir, sizeof(g_dir), "/tmp/vd_test_safetensors_XXXXXX");
    if (!mkdtemp(g_dir)) { perror("mkdtemp"); return 1; }
    test_round_trip();
    test_int_types();
    test_half_types();
    test_f16_all();
    test_malformed();
    test_hostile();
    /* leave nothing behind */
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_dir);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", g_dir);
    TEST_END();
}
