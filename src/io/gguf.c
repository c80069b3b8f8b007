/* gguf.c: llama.cpp's GGUF format (include/vera/gguf.h), versions 2 and 3.
 *
 * Everything is read through one bounds-checked cursor over the mapping, so a truncated or
 * corrupt file dies with its path and the byte where it ran out, never with a bad read. The
 * metadata is walked in full (values we do not need are skipped, nested arrays included) because
 * the tensor infos follow it: there is no index to jump with. Dequantization reproduces ggml's
 * (and gguf-py's) arithmetic exactly: each element is one fp32 multiply (Q4_1: then one add),
 * from the f16 block scale widened exactly. */
#define _POSIX_C_SOURCE 200809L
#include "vera/gguf.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "gguf.c reads little-endian data directly: port the byte swaps first"
#endif

#define VD_GGUF_MAGIC "GGUF"
#define VD_GGUF_DEFAULT_ALIGNMENT 32
#define VD_GGUF_MAX_DIMS 4         /* GGML_MAX_DIMS */
#define VD_GGUF_MAX_ARRAY_DEPTH 8  /* arrays of arrays: the spec allows them; nothing real nests deeper */

/* ----------------------------------------------------------------------------------------- */
/* ggml types: name, block size (elements), bytes per block (gguf-py's GGML_QUANT_SIZES). Every
 * type ggml defines is listed, so a file holding one we do not convert still validates and the
 * error names the type; numbers ggml retired (4, 5, 31-33, 36-38) are unknown. */

typedef struct {
    const char *name;
    uint32_t block, size;
} vd_ggml_type_info;

static const vd_ggml_type_info k_types[] = {
    [0] = {"F32", 1, 4},         [1] = {"F16", 1, 2},          [2] = {"Q4_0", 32, 18},      [3] = {"Q4_1", 32, 20},
    [6] = {"Q5_0", 32, 22},      [7] = {"Q5_1", 32, 24},       [8] = {"Q8_0", 32, 34},      [9] = {"Q8_1", 32, 40},
    [10] = {"Q2_K", 256, 84},    [11] = {"Q3_K", 256, 110},    [12] = {"Q4_K", 256, 144},   [13] = {"Q5_K", 256, 176},
    [14] = {"Q6_K", 256, 210},   [15] = {"Q8_K", 256, 292},    [16] = {"IQ2_XXS", 256, 66}, [17] = {"IQ2_XS", 256, 74},
    [18] = {"IQ3_XXS", 256, 98}, [19] = {"IQ1_S", 256, 50},    [20] = {"IQ4_NL", 32, 18},   [21] = {"IQ3_S", 256, 110},
    [22] = {"IQ2_S", 256, 82},   [23] = {"IQ4_XS", 256, 136},  [24] = {"I8", 1, 1},         [25] = {"I16", 1, 2},
    [26] = {"I32", 1, 4},        [27] = {"I64", 1, 8},         [28] = {"F64", 1, 8},        [29] = {"IQ1_M", 256, 56},
    [30] = {"BF16", 1, 2},       [34] = {"TQ1_0", 256, 54},    [35] = {"TQ2_0", 256, 66},   [39] = {"MXFP4", 32, 17},
    [40] = {"NVFP4", 64, 36},    [41] = {"Q1_0", 128, 18},
};
#define VD_N_GGML_TYPES ((uint32_t)(sizeof(k_types) / sizeof(k_types[0])))

static const vd_ggml_type_info *vd_type_info(uint32_t type) {
    return type < VD_N_GGML_TYPES && k_types[type].name ? &k_types[type] : NULL;
}

const char *vd_gguf_type_name(uint32_t type) {
    const vd_ggml_type_info *t = vd_type_info(type);
    return t ? t->name : "unknown";
}

int vd_gguf_type_supported(uint32_t type) {
    return type == VD_GGML_F32 || type == VD_GGML_F16 || type == VD_GGML_BF16 || type == VD_GGML_Q8_0 ||
           type == VD_GGML_Q4_0 || type == VD_GGML_Q4_1;
}

/* bytes of one scalar metadata value, 0 for string/array/unknown */
static uint64_t vd_value_size(uint32_t type) {
    switch (type) {
    case VD_GGUF_U8: case VD_GGUF_I8: case VD_GGUF_BOOL: return 1;
    case VD_GGUF_U16: case VD_GGUF_I16: return 2;
    case VD_GGUF_U32: case VD_GGUF_I32: case VD_GGUF_F32: return 4;
    case VD_GGUF_U64: case VD_GGUF_I64: case VD_GGUF_F64: return 8;
    default: return 0;
    }
}

static const char *vd_value_type_name(uint32_t type) {
    static const char *names[] = {"u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array",
                                  "u64", "i64", "f64"};
    return type < sizeof(names) / sizeof(names[0]) ? names[type] : "unknown";
}

/* ----------------------------------------------------------------------------------------- */
/* bounds-checked cursor */

typedef struct {
    const char *path;
    const uint8_t *base;
    uint64_t pos, size;
} vd_cur;

static void vd_need(vd_cur *c, uint64_t n, const char *what) {
    if (n > c->size - c->pos)
        vd_die("%s: file is truncated: %s at byte %llu needs %llu bytes, only %llu are left (file is %llu bytes)",
               c->path, what, (unsigned long long)c->pos, (unsigned long long)n,
               (unsigned long long)(c->size - c->pos), (unsigned long long)c->size);
}

static uint32_t vd_rd_u32(vd_cur *c, const char *what) {
    vd_need(c, 4, what);
    uint32_t v;
    memcpy(&v, c->base + c->pos, 4);
    c->pos += 4;
    return v;
}

static uint64_t vd_rd_u64(vd_cur *c, const char *what) {
    vd_need(c, 8, what);
    uint64_t v;
    memcpy(&v, c->base + c->pos, 8);
    c->pos += 8;
    return v;
}

/* a GGUF string: u64 length, then bytes; returns a pointer into the mapping */
static const char *vd_rd_str(vd_cur *c, uint64_t *len, const char *what) {
    *len = vd_rd_u64(c, what);
    vd_need(c, *len, what);
    const char *s = (const char *)c->base + c->pos;
    c->pos += *len;
    return s;
}

/* Validates and steps over one value of `type` (whose key is named in errors). */
static void vd_skip_value(vd_cur *c, uint32_t type, int depth, const char *key) {
    uint64_t sz = vd_value_size(type);
    if (sz) {
        vd_need(c, sz, key);
        c->pos += sz;
        return;
    }
    if (type == VD_GGUF_STRING) {
        uint64_t len;
        vd_rd_str(c, &len, key);
        return;
    }
    if (type != VD_GGUF_ARRAY)
        vd_die("%s: metadata %s has value type %u (expected 0 to 12: u8 ... f64)", c->path, key, type);
    if (depth >= VD_GGUF_MAX_ARRAY_DEPTH)
        vd_die("%s: metadata %s nests arrays %d deep (expected at most %d)", c->path, key, depth + 1,
               VD_GGUF_MAX_ARRAY_DEPTH);
    uint32_t et = vd_rd_u32(c, key);
    uint64_t n = vd_rd_u64(c, key);
    uint64_t esz = vd_value_size(et);
    if (esz) {
        if (n > (c->size - c->pos) / esz)
            vd_die("%s: file is truncated: metadata %s is an array of %llu %s at byte %llu, past the end of the file "
                   "(%llu bytes)",
                   c->path, key, (unsigned long long)n, vd_value_type_name(et), (unsigned long long)c->pos,
                   (unsigned long long)c->size);
        c->pos += n * esz;
        return;
    }
    if (et != VD_GGUF_STRING && et != VD_GGUF_ARRAY)
        vd_die("%s: metadata %s is an array of value type %u (expected 0 to 12: u8 ... f64)", c->path, key, et);
    /* variable-size elements: each is at least 8 bytes (a length or a count), which bounds the
     * loop by the file size even for a corrupt n */
    for (uint64_t i = 0; i < n; i++) vd_skip_value(c, et, depth + 1, key);
}

/* ----------------------------------------------------------------------------------------- */
/* open / close */

int vd_gguf_has_suffix(const char *path) {
    size_t n = strlen(path);
    return n >= 5 && strcmp(path + n - 5, ".gguf") == 0;
}

int vd_gguf_has_magic(const char *path) {
    FILE *f = fopenCheck(path, "rb");
    char magic[4];
    size_t got = fread(magic, 1, 4, f);
    if (got != 4 && ferror(f)) vd_die("%s: read failed (%s)", path, strerror(errno));
    fcloseCheck(f, path);
    return got == 4 && memcmp(magic, VD_GGUF_MAGIC, 4) == 0;
}

static void vd_copy_name(char *dst, size_t cap, const char *s, uint64_t len, const char *path, uint64_t at,
                         const char *what) {
    if (len >= cap) vd_die("%s: %s at byte %llu is %llu bytes long (expected under %zu)", path, what,
                           (unsigned long long)at, (unsigned long long)len, cap);
    if (memchr(s, 0, (size_t)len)) vd_die("%s: %s at byte %llu contains a NUL byte", path, what, (unsigned long long)at);
    memcpy(dst, s, (size_t)len);
    dst[len] = 0;
}

void vd_gguf_open(vd_gguf *g, const char *path) {
    memset(g, 0, sizeof(*g));
    if (snprintf(g->path, sizeof(g->path), "%s", path) >= (int)sizeof(g->path)) vd_die("%s: path too long", path);
    /* magic + version + two counts */
    g->map = vd_mmap_file(path, 24, "a .gguf file", &g->map_size);
    const uint8_t *map = g->map;
    uint64_t file_size = g->map_size;
    vd_cur c = {g->path, map, 0, file_size};
    if (memcmp(c.base, VD_GGUF_MAGIC, 4) != 0)
        vd_die("%s: bad magic %02x %02x %02x %02x (expected \"GGUF\": not a GGUF file)", path, c.base[0], c.base[1],
               c.base[2], c.base[3]);
    c.pos = 4;
    g->version = vd_rd_u32(&c, "version");
    if (g->version != 2 && g->version != 3) {
        /* a big-endian file reads as 0x02000000 / 0x03000000 here */
        const char *hint = (g->version == 0x02000000u || g->version == 0x03000000u) ? " (a big-endian GGUF?)"
                           : g->version == 1 ? " (GGUF v1 predates 64-bit counts: re-convert the model)" : "";
        vd_die("%s: GGUF version %u is not supported (expected 2 or 3)%s", path, g->version, hint);
    }
    uint64_t n_tensors = vd_rd_u64(&c, "tensor count");
    uint64_t n_kv = vd_rd_u64(&c, "metadata count");
    /* a key-value pair takes at least 13 bytes (key length, type, a u8), a tensor info 32:
     * refuse counts the file cannot hold before allocating for them */
    if (n_kv > (file_size - c.pos) / 13)
        vd_die("%s: file is truncated or corrupt: %llu metadata entries cannot fit in %llu bytes", path,
               (unsigned long long)n_kv, (unsigned long long)file_size);
    if (n_tensors > (file_size - c.pos) / 32)
        vd_die("%s: file is truncated or corrupt: %llu tensor infos cannot fit in %llu bytes", path,
               (unsigned long long)n_tensors, (unsigned long long)file_size);

    g->kv = callocCheck((size_t)(n_kv ? n_kv : 1), sizeof(vd_gguf_kv));
    g->n_kv = (int64_t)n_kv;
    for (uint64_t i = 0; i < n_kv; i++) {
        vd_gguf_kv *kv = &g->kv[i];
        uint64_t at = c.pos, len;
        const char *key = vd_rd_str(&c, &len, "metadata key");
        char name[512];
        vd_copy_name(name, sizeof(name), key, len, path, at, "metadata key");
        for (uint64_t j = 0; j < i; j++)
            if (strcmp(g->kv[j].key, name) == 0) vd_die("%s: metadata key %s appears twice (expected unique keys)", path, name);
        kv->key = mallocCheck(len + 1);
        memcpy(kv->key, name, len + 1);
        kv->type = vd_rd_u32(&c, name);
        if (kv->type == VD_GGUF_ARRAY) {
            /* remember where the elements start; vd_skip_value re-reads type and count */
            vd_need(&c, 12, name);
            memcpy(&kv->array_type, c.base + c.pos, 4);
            memcpy(&kv->array_n, c.base + c.pos + 4, 8);
            kv->value = c.base + c.pos + 12;
        } else {
            kv->value = c.base + c.pos;
        }
        vd_skip_value(&c, kv->type, 0, name);
    }

    g->alignment = VD_GGUF_DEFAULT_ALIGNMENT;
    const vd_gguf_kv *al = vd_gguf_find_kv(g, "general.alignment");
    if (al) {
        uint32_t a;
        if (al->type != VD_GGUF_U32)
            vd_die("%s: metadata general.alignment has type %s (expected u32)", path, vd_value_type_name(al->type));
        memcpy(&a, al->value, 4);
        if (a == 0 || (a & (a - 1)) != 0)
            vd_die("%s: metadata general.alignment is %u (expected a power of two)", path, a);
        g->alignment = a;
    }

    g->tensors = callocCheck((size_t)(n_tensors ? n_tensors : 1), sizeof(vd_gguf_tensor));
    g->n_tensors = (int64_t)n_tensors;
    for (uint64_t i = 0; i < n_tensors; i++) {
        vd_gguf_tensor *t = &g->tensors[i];
        uint64_t at = c.pos, len;
        const char *name = vd_rd_str(&c, &len, "tensor name");
        vd_copy_name(t->name, sizeof(t->name), name, len, path, at, "tensor name");
        uint32_t nd = vd_rd_u32(&c, t->name);
        if (nd < 1 || nd > VD_GGUF_MAX_DIMS)
            vd_die("%s: tensor %s has %u dimensions (expected 1 to %d)", path, t->name, nd, VD_GGUF_MAX_DIMS);
        t->n_dims = (int32_t)nd;
        uint64_t numel = 1;
        int overflow = 0;
        for (uint32_t d = 0; d < nd; d++) {
            uint64_t ne = vd_rd_u64(&c, t->name);
            if (ne > (uint64_t)INT64_MAX) overflow = 1;
            else if (ne != 0 && numel > (uint64_t)INT64_MAX / ne) overflow = 1;
            else numel *= ne;
            t->ne[d] = (int64_t)ne;
        }
        if (overflow) vd_die("%s: tensor %s: its dimensions overflow 64 bits (corrupt tensor info)", path, t->name);
        t->numel = (int64_t)numel;
        t->type = vd_rd_u32(&c, t->name);
        t->offset = vd_rd_u64(&c, t->name);
        const vd_ggml_type_info *ti = vd_type_info(t->type);
        if (!ti)
            vd_die("%s: tensor %s has ggml type %u, which ggml does not define (expected e.g. 0 F32, 1 F16, 8 Q8_0)",
                   path, t->name, t->type);
        if (t->ne[0] % ti->block != 0)
            vd_die("%s: tensor %s: ne[0] = %lld is not a multiple of the %s block size %u", path, t->name,
                   (long long)t->ne[0], ti->name, ti->block);
        /* numel / block blocks of `size` bytes; numel < 2^63 so the product fits unless absurd */
        uint64_t blocks = numel / ti->block;
        if (blocks > UINT64_MAX / ti->size) vd_die("%s: tensor %s: its byte size overflows 64 bits", path, t->name);
        t->nbytes = blocks * ti->size;
        if (t->offset % g->alignment != 0)
            vd_die("%s: tensor %s: offset %llu is not a multiple of the alignment %llu", path, t->name,
                   (unsigned long long)t->offset, (unsigned long long)g->alignment);
        for (uint64_t j = 0; j < i; j++)
            if (strcmp(g->tensors[j].name, t->name) == 0)
                vd_die("%s: tensor %s appears twice (expected unique names)", path, t->name);
    }

    /* the data section starts at the next multiple of the alignment */
    uint64_t data_start = c.pos + (g->alignment - c.pos % g->alignment) % g->alignment;
    g->data_size = data_start < file_size ? file_size - data_start : 0;
    g->data = c.base + (data_start < file_size ? data_start : file_size);
    for (int64_t i = 0; i < g->n_tensors; i++) {
        const vd_gguf_tensor *t = &g->tensors[i];
        if (t->offset > g->data_size || t->nbytes > g->data_size - t->offset)
            vd_die("%s: tensor %s (%s, %llu bytes at data offset %llu) runs past the end of the data section "
                   "(%llu bytes from byte %llu): file truncated or corrupt",
                   path, t->name, vd_gguf_type_name(t->type), (unsigned long long)t->nbytes,
                   (unsigned long long)t->offset, (unsigned long long)g->data_size, (unsigned long long)data_start);
    }
}

void vd_gguf_close(vd_gguf *g) {
    if (g->map && munmap(g->map, g->map_size) != 0) vd_warn("%s: munmap failed (%s)", g->path, strerror(errno));
    for (int64_t i = 0; i < g->n_kv; i++) free(g->kv[i].key);
    free(g->kv);
    free(g->tensors);
    memset(g, 0, sizeof(*g));
}

/* ----------------------------------------------------------------------------------------- */
/* metadata */

const vd_gguf_kv *vd_gguf_find_kv(const vd_gguf *g, const char *key) {
    for (int64_t i = 0; i < g->n_kv; i++)
        if (strcmp(g->kv[i].key, key) == 0) return &g->kv[i];
    return NULL;
}

int vd_gguf_get_int(const vd_gguf *g, const char *key, int64_t *out) {
    const vd_gguf_kv *kv = vd_gguf_find_kv(g, key);
    if (!kv) return 0;
    const uint8_t *p = kv->value;
    switch (kv->type) {
    case VD_GGUF_U8: *out = *p; break;
    case VD_GGUF_I8: *out = (int8_t)*p; break;
    case VD_GGUF_U16: { uint16_t v; memcpy(&v, p, 2); *out = v; break; }
    case VD_GGUF_I16: { int16_t v; memcpy(&v, p, 2); *out = v; break; }
    case VD_GGUF_U32: { uint32_t v; memcpy(&v, p, 4); *out = v; break; }
    case VD_GGUF_I32: { int32_t v; memcpy(&v, p, 4); *out = v; break; }
    case VD_GGUF_I64: { int64_t v; memcpy(&v, p, 8); *out = v; break; }
    case VD_GGUF_U64: {
        uint64_t v;
        memcpy(&v, p, 8);
        if (v > (uint64_t)INT64_MAX) vd_die("%s: metadata %s = %llu is out of range", g->path, key, (unsigned long long)v);
        *out = (int64_t)v;
        break;
    }
    default:
        vd_die("%s: metadata %s has type %s (expected an integer)", g->path, key, vd_value_type_name(kv->type));
    }
    return 1;
}

int vd_gguf_get_float(const vd_gguf *g, const char *key, double *out) {
    const vd_gguf_kv *kv = vd_gguf_find_kv(g, key);
    if (!kv) return 0;
    if (kv->type == VD_GGUF_F32) {
        float v;
        memcpy(&v, kv->value, 4);
        *out = v;
    } else if (kv->type == VD_GGUF_F64) {
        memcpy(out, kv->value, 8);
    } else if (kv->type == VD_GGUF_STRING || kv->type == VD_GGUF_ARRAY || kv->type == VD_GGUF_BOOL) {
        vd_die("%s: metadata %s has type %s (expected a number)", g->path, key, vd_value_type_name(kv->type));
    } else {
        int64_t v;
        vd_gguf_get_int(g, key, &v);
        *out = (double)v;
    }
    return 1;
}

int vd_gguf_get_string(const vd_gguf *g, const char *key, const char **s, uint64_t *len) {
    const vd_gguf_kv *kv = vd_gguf_find_kv(g, key);
    if (!kv) return 0;
    if (kv->type != VD_GGUF_STRING)
        vd_die("%s: metadata %s has type %s (expected a string)", g->path, key, vd_value_type_name(kv->type));
    memcpy(len, kv->value, 8); /* validated on open */
    *s = (const char *)kv->value + 8;
    return 1;
}

const vd_gguf_tensor *vd_gguf_find(const vd_gguf *g, const char *name) {
    for (int64_t i = 0; i < g->n_tensors; i++)
        if (strcmp(g->tensors[i].name, name) == 0) return &g->tensors[i];
    return NULL;
}

/* ----------------------------------------------------------------------------------------- */
/* dequantization */

/* IEEE half -> float, exact (as numpy's astype(float32) and ggml's table): subnormals
 * renormalised, inf kept, NaN quieted with its payload. */
static float vd_half(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (mant << 13) | (mant ? 0x00400000u : 0);
    } else if (exp != 0) {
        bits = sign | ((exp + (127 - 15)) << 23) | (mant << 13);
    } else if (mant == 0) {
        bits = sign;
    } else {
        uint32_t e = 127 - 15 + 1;
        while ((mant & 0x400u) == 0) {
            mant <<= 1;
            e--;
        }
        bits = sign | (e << 23) | ((mant & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* Q8_0 block: f16 d, 32 x int8 q; x = q * d */
static void vd_deq_q8_0(const uint8_t *src, float *dst, int64_t n_blocks) {
    for (int64_t b = 0; b < n_blocks; b++, src += 34, dst += 32) {
        float d = vd_half(src);
        const int8_t *q = (const int8_t *)(src + 2);
        for (int j = 0; j < 32; j++) dst[j] = (float)q[j] * d;
    }
}

/* Q4_0 block: f16 d, 16 bytes; low nibbles are elements 0..15, high nibbles 16..31; x = (q - 8) * d */
static void vd_deq_q4_0(const uint8_t *src, float *dst, int64_t n_blocks) {
    for (int64_t b = 0; b < n_blocks; b++, src += 18, dst += 32) {
        float d = vd_half(src);
        const uint8_t *qs = src + 2;
        for (int j = 0; j < 16; j++) {
            dst[j] = (float)((int)(qs[j] & 0x0f) - 8) * d;
            dst[j + 16] = (float)((int)(qs[j] >> 4) - 8) * d;
        }
    }
}

/* Q4_1 block: f16 d, f16 m, 16 bytes of nibbles as Q4_0; x = q * d + m, rounded after the
 * multiply and again after the add, as gguf-py does: the product goes through a float variable
 * so no compiler may fuse the two into one fma (C allows contraction only within an expression). */
static void vd_deq_q4_1(const uint8_t *src, float *dst, int64_t n_blocks) {
    for (int64_t b = 0; b < n_blocks; b++, src += 20, dst += 32) {
        float d = vd_half(src), m = vd_half(src + 2);
        const uint8_t *qs = src + 4;
        for (int j = 0; j < 16; j++) {
            float lo = (float)(qs[j] & 0x0f) * d;
            float hi = (float)(qs[j] >> 4) * d;
            dst[j] = lo + m;
            dst[j + 16] = hi + m;
        }
    }
}

void vd_gguf_read_f32(const vd_gguf *g, const vd_gguf_tensor *t, float *dst) {
    const uint8_t *src = g->data + t->offset; /* range checked on open */
    int64_t n = t->numel;
    switch (t->type) {
    case VD_GGML_F32:
        memcpy(dst, src, (size_t)n * sizeof(float));
        break;
    case VD_GGML_F16:
        for (int64_t i = 0; i < n; i++) dst[i] = vd_half(src + 2 * i);
        break;
    case VD_GGML_BF16: /* the top half of a float: widening is exact */
        for (int64_t i = 0; i < n; i++) {
            uint16_t b;
            memcpy(&b, src + 2 * i, 2);
            uint32_t bits = (uint32_t)b << 16;
            memcpy(&dst[i], &bits, 4);
        }
        break;
    case VD_GGML_Q8_0: vd_deq_q8_0(src, dst, n / 32); break;
    case VD_GGML_Q4_0: vd_deq_q4_0(src, dst, n / 32); break;
    case VD_GGML_Q4_1: vd_deq_q4_1(src, dst, n / 32); break;
    default:
        vd_die("%s: tensor %s has type %s (%u), which is not supported (expected F32, F16, BF16, Q8_0, Q4_0 or Q4_1)",
               g->path, t->name, vd_gguf_type_name(t->type), t->type);
    }
}

/* ----------------------------------------------------------------------------------------- */
/* llama: names and config */

typedef struct {
    const char *gguf, *hf;
    int kind;
} vd_name_map;

/* whole-model tensors */
static const vd_name_map k_llama_global[] = {
    {"token_embd", "model.embed_tokens", VD_GGUF_PLAIN},
    {"output_norm", "model.norm", VD_GGUF_PLAIN},
    {"output", "lm_head", VD_GGUF_PLAIN},
    /* llama.cpp stores Llama 3's RoPE frequency factors as a tensor; HF computes them from
     * config.json's rope_scaling, so there is no HF tensor (transformers' loader drops it too) */
    {"rope_freqs", NULL, VD_GGUF_LLAMA_CPP_ONLY},
};

/* blk.N.<gguf> -> model.layers.N.<hf> */
static const vd_name_map k_llama_block[] = {
    {"attn_norm", "input_layernorm", VD_GGUF_PLAIN},
    {"ffn_norm", "post_attention_layernorm", VD_GGUF_PLAIN},
    {"attn_q", "self_attn.q_proj", VD_GGUF_PERMUTED_Q},
    {"attn_k", "self_attn.k_proj", VD_GGUF_PERMUTED_K},
    {"attn_v", "self_attn.v_proj", VD_GGUF_PLAIN},
    {"attn_output", "self_attn.o_proj", VD_GGUF_PLAIN},
    {"ffn_gate", "mlp.gate_proj", VD_GGUF_PLAIN},
    {"ffn_up", "mlp.up_proj", VD_GGUF_PLAIN},
    {"ffn_down", "mlp.down_proj", VD_GGUF_PLAIN},
};

#define VD_COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))

int vd_gguf_llama_hf_name(const char *gguf_name, char *out, size_t cap) {
    const char *dot = strrchr(gguf_name, '.');
    if (!dot || (strcmp(dot, ".weight") != 0 && strcmp(dot, ".bias") != 0)) return VD_GGUF_NO_HF_NAME;
    size_t base_len = (size_t)(dot - gguf_name);
    const vd_name_map *m = NULL;
    long layer = -1;
    if (strncmp(gguf_name, "blk.", 4) == 0) {
        /* blk.<decimal, no leading zeros>.<name> */
        const char *p = gguf_name + 4;
        const char *digits = p;
        layer = 0;
        while (*p >= '0' && *p <= '9' && p - digits < 9) layer = layer * 10 + (*p++ - '0');
        if (p == digits || *p != '.' || (digits[0] == '0' && p - digits > 1)) return VD_GGUF_NO_HF_NAME;
        p++;
        size_t len = (size_t)(dot - p);
        for (int i = 0; i < VD_COUNT(k_llama_block); i++)
            if (strlen(k_llama_block[i].gguf) == len && strncmp(p, k_llama_block[i].gguf, len) == 0) m = &k_llama_block[i];
    } else {
        for (int i = 0; i < VD_COUNT(k_llama_global); i++)
            if (strlen(k_llama_global[i].gguf) == base_len && strncmp(gguf_name, k_llama_global[i].gguf, base_len) == 0)
                m = &k_llama_global[i];
    }
    if (!m) return VD_GGUF_NO_HF_NAME;
    if (!m->hf) return m->kind;
    int n = layer >= 0 ? snprintf(out, cap, "model.layers.%ld.%s%s", layer, m->hf, dot)
                       : snprintf(out, cap, "%s%s", m->hf, dot);
    if (n < 0 || (size_t)n >= cap) return VD_GGUF_NO_HF_NAME;
    return m->kind;
}

static int64_t vd_require_int(const vd_gguf *g, const char *key) {
    int64_t v;
    if (!vd_gguf_get_int(g, key, &v)) vd_die("%s: metadata %s is missing (expected it in a llama GGUF)", g->path, key);
    if (v <= 0) vd_die("%s: metadata %s = %lld (expected a positive integer)", g->path, key, (long long)v);
    return v;
}

static int64_t vd_optional_int(const vd_gguf *g, const char *key, int64_t dflt) {
    int64_t v;
    if (!vd_gguf_get_int(g, key, &v)) return dflt;
    if (v <= 0) vd_die("%s: metadata %s = %lld (expected a positive integer)", g->path, key, (long long)v);
    return v;
}

cJSON *vd_gguf_llama_config(const vd_gguf *g) {
    const char *arch;
    uint64_t arch_len;
    if (!vd_gguf_get_string(g, "general.architecture", &arch, &arch_len))
        vd_die("%s: metadata general.architecture is missing (expected \"llama\")", g->path);
    if (arch_len != 5 || memcmp(arch, "llama", 5) != 0)
        vd_die("%s: general.architecture is \"%.*s\" (only \"llama\" GGUF files are supported)", g->path,
               (int)(arch_len > 64 ? 64 : arch_len), arch);

    /* the keys transformers' GGUF loader maps (integrations/ggml.py), with LlamaConfig's
     * defaults where a key is optional */
    int64_t n_layer = vd_require_int(g, "llama.block_count");
    int64_t hidden = vd_require_int(g, "llama.embedding_length");
    int64_t ffn = vd_require_int(g, "llama.feed_forward_length");
    int64_t n_head = vd_require_int(g, "llama.attention.head_count");
    int64_t n_head_kv = vd_optional_int(g, "llama.attention.head_count_kv", n_head);
    int64_t ctx = vd_optional_int(g, "llama.context_length", 2048);
    if (hidden % n_head != 0 && !vd_gguf_find_kv(g, "llama.rope.dimension_count"))
        vd_die("%s: llama.embedding_length %lld is not a multiple of llama.attention.head_count %lld (and "
               "llama.rope.dimension_count is missing)",
               g->path, (long long)hidden, (long long)n_head);
    int64_t head_dim = vd_optional_int(g, "llama.rope.dimension_count", hidden / n_head);
    if (n_head % n_head_kv != 0)
        vd_die("%s: llama.attention.head_count %lld is not a multiple of llama.attention.head_count_kv %lld", g->path,
               (long long)n_head, (long long)n_head_kv);
    double eps = 1e-6, theta = 10000.0;
    vd_gguf_get_float(g, "llama.attention.layer_norm_rms_epsilon", &eps);
    vd_gguf_get_float(g, "llama.rope.freq_base", &theta);

    int64_t vocab = 0;
    if (!vd_gguf_get_int(g, "llama.vocab_size", &vocab)) {
        const vd_gguf_kv *tok = vd_gguf_find_kv(g, "tokenizer.ggml.tokens");
        const vd_gguf_tensor *emb = vd_gguf_find(g, "token_embd.weight");
        if (tok && tok->type == VD_GGUF_ARRAY) vocab = (int64_t)tok->array_n;
        else if (emb && emb->n_dims == 2) vocab = emb->ne[1];
        else
            vd_die("%s: cannot tell the vocabulary size (expected llama.vocab_size, tokenizer.ggml.tokens or a 2-D "
                   "token_embd.weight)",
                   g->path);
    }

    cJSON *cfg = cJSON_CreateObject();
    cJSON *archs = cJSON_AddArrayToObject(cfg, "architectures");
    if (!cfg || !archs) vd_die("out of memory building the config of %s", g->path);
    cJSON_AddItemToArray(archs, cJSON_CreateString("LlamaForCausalLM"));
    cJSON_AddStringToObject(cfg, "model_type", "llama");
    cJSON_AddNumberToObject(cfg, "hidden_size", (double)hidden);
    cJSON_AddNumberToObject(cfg, "intermediate_size", (double)ffn);
    cJSON_AddNumberToObject(cfg, "num_hidden_layers", (double)n_layer);
    cJSON_AddNumberToObject(cfg, "num_attention_heads", (double)n_head);
    cJSON_AddNumberToObject(cfg, "num_key_value_heads", (double)n_head_kv);
    cJSON_AddNumberToObject(cfg, "head_dim", (double)head_dim);
    cJSON_AddNumberToObject(cfg, "max_position_embeddings", (double)ctx);
    cJSON_AddNumberToObject(cfg, "rms_norm_eps", eps);
    cJSON_AddNumberToObject(cfg, "rope_theta", theta);
    cJSON_AddNumberToObject(cfg, "vocab_size", (double)vocab);
    /* llama.cpp writes no output.weight when the head is the embedding (transformers' rule too) */
    cJSON_AddBoolToObject(cfg, "tie_word_embeddings", vd_gguf_find(g, "output.weight") == NULL);
    int64_t id;
    if (vd_gguf_get_int(g, "tokenizer.ggml.bos_token_id", &id)) cJSON_AddNumberToObject(cfg, "bos_token_id", (double)id);
    if (vd_gguf_get_int(g, "tokenizer.ggml.eos_token_id", &id)) cJSON_AddNumberToObject(cfg, "eos_token_id", (double)id);
    return cfg;
}
