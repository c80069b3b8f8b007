/* safetensors.c: the Hugging Face safetensors format.
 *
 *   [u64 little-endian N][N bytes of JSON header][data section]
 *
 * The header maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (byte
 * offsets into the data section) plus an optional "__metadata__" string map. The reader maps
 * the whole file and validates every tensor before anyone reads it, so a malformed file dies
 * here with its path instead of as a bad read later. The writer pads the header with spaces to
 * a multiple of 8 bytes, like the reference implementation, so the data section is aligned. */
#define _POSIX_C_SOURCE 200809L
#include "vera/safetensors.h"

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
#error "safetensors.c reads and writes little-endian data directly: port the byte swaps first"
#endif

/* The reference implementation refuses headers above 100 MB; so do we (a corrupt length field
 * would otherwise make us parse gigabytes of tensor data as JSON). */
#define VD_ST_MAX_HEADER 100000000ULL

/* ----------------------------------------------------------------------------------------- */
/* dtypes */

typedef struct {
    const char *name;
    vd_dtype dtype;
    uint32_t size; /* bytes per element */
} vd_dtype_info;

/* Every dtype the reference implementation defines with a whole-byte element size. We only
 * convert the first three, but we must know the others' sizes to validate a file holding them. */
static const vd_dtype_info k_dtypes[] = {
    {"F32", VD_DTYPE_F32, 4},     {"F16", VD_DTYPE_F16, 2},     {"BF16", VD_DTYPE_BF16, 2},
    {"F64", VD_DTYPE_OTHER, 8},   {"I64", VD_DTYPE_OTHER, 8},   {"U64", VD_DTYPE_OTHER, 8},
    {"I32", VD_DTYPE_OTHER, 4},   {"U32", VD_DTYPE_OTHER, 4},   {"I16", VD_DTYPE_OTHER, 2},
    {"U16", VD_DTYPE_OTHER, 2},   {"I8", VD_DTYPE_OTHER, 1},    {"U8", VD_DTYPE_OTHER, 1},
    {"BOOL", VD_DTYPE_OTHER, 1},  {"F8_E4M3", VD_DTYPE_OTHER, 1}, {"F8_E5M2", VD_DTYPE_OTHER, 1},
    {"F8_E8M0", VD_DTYPE_OTHER, 1}, {"C64", VD_DTYPE_OTHER, 8},
};
#define VD_N_DTYPES ((int)(sizeof(k_dtypes) / sizeof(k_dtypes[0])))

static const vd_dtype_info *vd_dtype_lookup(const char *name) {
    for (int i = 0; i < VD_N_DTYPES; i++)
        if (strcmp(k_dtypes[i].name, name) == 0) return &k_dtypes[i];
    return NULL;
}

/* IEEE half -> float, exact for every input: subnormals are renormalised, inf stays inf, and
 * NaN keeps its sign and payload (shifted into the top of the float mantissa) and comes out
 * quiet, as the hardware conversion (F16C vcvtph2ps, which torch's .float() uses) does. */
static float vd_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (mant << 13);           /* inf / NaN */
        if (mant) bits |= 0x00400000u;                       /* quiet a signalling NaN */
    } else if (exp != 0) {
        bits = sign | ((exp + (127 - 15)) << 23) | (mant << 13); /* normal: rebias */
    } else if (mant == 0) {
        bits = sign;                                          /* +-0 */
    } else {
        /* subnormal half: mant * 2^-24. Shift the leading 1 up to the implicit-bit position. */
        uint32_t e = 127 - 15 + 1;
        while ((mant & 0x400u) == 0) {
            mant <<= 1;
            e--;
        }
        bits = sign | (e << 23) | ((mant & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof(f));
    return f;
}

/* ----------------------------------------------------------------------------------------- */
/* reader */

/* Dies with "<path>: <message>". Frees only the JSON tree: the process is ending anyway. */
static void vd_st_fail(vd_safetensors *st, cJSON *root, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 3, 4)));
static void vd_st_fail(vd_safetensors *st, cJSON *root, const char *fmt, ...) {
    char msg[1536];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (root) cJSON_Delete(root);
    vd_die("%s: %s", st->path, msg);
}

/* A JSON number that is a non-negative integer representable exactly (cJSON stores doubles,
 * so anything at or above 2^53 may have been rounded: refuse it rather than trust it). */
static int vd_json_u64(const cJSON *item, uint64_t *out) {
    if (!cJSON_IsNumber(item)) return 0;
    double v = item->valuedouble;
    if (!(v >= 0.0) || v >= 9007199254740992.0 || v != (double)(uint64_t)v) return 0;
    *out = (uint64_t)v;
    return 1;
}

static void vd_st_parse_tensor(vd_safetensors *st, cJSON *root, const cJSON *item, vd_st_tensor *t,
                               uint64_t data_size) {
    const char *name = item->string;
    if (strlen(name) >= sizeof(t->name))
        vd_st_fail(st, root, "tensor name '%.64s...' is %zu bytes long (expected at most %zu)", name, strlen(name),
                   sizeof(t->name) - 1);
    snprintf(t->name, sizeof(t->name), "%s", name);
    if (!cJSON_IsObject(item))
        vd_st_fail(st, root, "tensor %s: header entry is not an object (expected {\"dtype\", \"shape\", \"data_offsets\"})",
                   name);

    const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(item, "dtype");
    if (!cJSON_IsString(dtype))
        vd_st_fail(st, root, "tensor %s: missing or non-string \"dtype\" (expected e.g. \"F32\")", name);
    const vd_dtype_info *info = vd_dtype_lookup(dtype->valuestring);
    if (!info)
        vd_st_fail(st, root, "tensor %s: unknown dtype \"%.32s\" (expected F32, F16, BF16, F64, I64, I32, ...)", name,
                   dtype->valuestring);
    t->dtype = info->dtype;
    snprintf(t->dtype_name, sizeof(t->dtype_name), "%s", info->name);

    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(item, "shape");
    if (!cJSON_IsArray(shape)) vd_st_fail(st, root, "tensor %s: missing or non-array \"shape\" (expected a list of sizes)", name);
    int nd = cJSON_GetArraySize(shape);
    if (nd > 8) vd_st_fail(st, root, "tensor %s: %d dimensions (expected at most 8)", name, nd);
    t->ndim = nd;
    /* numel in uint64 with an overflow check: a hostile shape must not wrap to a small size */
    uint64_t numel = 1;
    int overflow = 0;
    for (int d = 0; d < nd; d++) {
        uint64_t dim;
        if (!vd_json_u64(cJSON_GetArrayItem(shape, d), &dim))
            vd_st_fail(st, root, "tensor %s: shape[%d] is not a non-negative integer (expected sizes >= 0)", name, d);
        t->shape[d] = (int64_t)dim;
        if (dim != 0 && numel > UINT64_MAX / dim) overflow = 1;
        else numel *= dim;
    }

    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
    uint64_t begin, end;
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2 || !vd_json_u64(cJSON_GetArrayItem(offs, 0), &begin) ||
        !vd_json_u64(cJSON_GetArrayItem(offs, 1), &end))
        vd_st_fail(st, root, "tensor %s: bad \"data_offsets\" (expected [begin, end], two non-negative integers)", name);
    if (begin > end || end > data_size)
        vd_st_fail(st, root,
                   "tensor %s: data_offsets [%llu, %llu] outside the data section of %llu bytes (expected begin <= end <= %llu)",
                   name, (unsigned long long)begin, (unsigned long long)end, (unsigned long long)data_size,
                   (unsigned long long)data_size);
    t->begin = begin;
    t->end = end;
    if (overflow || numel > UINT64_MAX / info->size || end - begin != numel * info->size)
        vd_st_fail(st, root, "tensor %s: data_offsets span %llu bytes but shape and dtype %s need %llu%s", name,
                   (unsigned long long)(end - begin), info->name,
                   overflow ? 0ULL : (unsigned long long)(numel * info->size), overflow ? " (overflow)" : "");
}

void vd_safetensors_open(vd_safetensors *st, const char *path) {
    memset(st, 0, sizeof(*st));
    if (snprintf(st->path, sizeof(st->path), "%s", path) >= (int)sizeof(st->path)) vd_die("%s: path too long", path);

    st->map = vd_mmap_file(path, 8, "a .safetensors file", &st->map_size);
    uint64_t file_size = st->map_size;
    const uint8_t *bytes = st->map;
    uint64_t header_len;
    memcpy(&header_len, bytes, 8); /* little-endian host (checked at compile time) */
    if (header_len == 0 || header_len > VD_ST_MAX_HEADER)
        vd_st_fail(st, NULL, "header length %llu is not sane (expected 2 to %llu bytes)", (unsigned long long)header_len,
                   VD_ST_MAX_HEADER);
    if (header_len > file_size - 8)
        vd_st_fail(st, NULL, "header length %llu runs past the end of the file (%llu bytes; file truncated?)",
                   (unsigned long long)header_len, (unsigned long long)file_size);
    const char *header = (const char *)bytes + 8;
    uint64_t data_size = file_size - 8 - header_len;
    st->data = bytes + 8 + header_len;

    const char *json_end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(header, (size_t)header_len, &json_end, 0);
    if (!root) {
        const char *where = cJSON_GetErrorPtr();
        long at = (where && where >= header && where <= header + header_len) ? (long)(where - header) : -1;
        vd_st_fail(st, NULL, "header is not valid JSON (parse error near byte %ld of %llu)", at,
                   (unsigned long long)header_len);
    }
    if (!cJSON_IsObject(root)) vd_st_fail(st, root, "header is not a JSON object (expected {\"name\": {...}, ...})");
    /* only the space padding may follow the object (the reference parser rejects anything else) */
    for (const char *p = json_end; p && p < header + header_len; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r')
            vd_st_fail(st, root, "header has bytes after the JSON object at byte %ld (expected only space padding)",
                       (long)(p - header));

    int n = 0;
    for (const cJSON *it = root->child; it; it = it->next)
        if (strcmp(it->string, "__metadata__") != 0) n++;
    st->tensors = callocCheck((size_t)n, sizeof(vd_st_tensor));
    st->n_tensors = n;
    int k = 0;
    for (const cJSON *it = root->child; it; it = it->next) {
        /* __metadata__ is a free-form string map (e.g. {"format": "pt"}): nothing we need */
        if (strcmp(it->string, "__metadata__") == 0) continue;
        vd_st_tensor *t = &st->tensors[k];
        vd_st_parse_tensor(st, root, it, t, data_size);
        /* JSON allows repeated keys and cJSON keeps both: refuse the ambiguity */
        for (int j = 0; j < k; j++)
            if (strcmp(st->tensors[j].name, t->name) == 0)
                vd_st_fail(st, root, "tensor %s appears twice in the header (expected unique names)", t->name);
        k++;
    }
    cJSON_Delete(root);
}

const vd_st_tensor *vd_safetensors_find(const vd_safetensors *st, const char *name) {
    for (int32_t i = 0; i < st->n_tensors; i++)
        if (strcmp(st->tensors[i].name, name) == 0) return &st->tensors[i];
    return NULL;
}

int64_t vd_st_tensor_numel(const vd_st_tensor *t) {
    int64_t n = 1;
    for (int32_t d = 0; d < t->ndim; d++) n *= t->shape[d]; /* validated on open: fits, no overflow */
    return n;
}

void vd_safetensors_read_f32(const vd_safetensors *st, const vd_st_tensor *t, float *dst) {
    size_t n = (size_t)vd_st_tensor_numel(t);
    const uint8_t *src = st->data + t->begin;
    /* memcpy element by element: the data section need not be aligned for the element type
     * (files from other writers may not pad their header) */
    switch (t->dtype) {
    case VD_DTYPE_F32:
        memcpy(dst, src, n * sizeof(float));
        break;
    case VD_DTYPE_F16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, src + 2 * i, 2);
            dst[i] = vd_f16_to_f32(h);
        }
        break;
    case VD_DTYPE_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t b;
            memcpy(&b, src + 2 * i, 2);
            dst[i] = vd_bf16_to_f32(b);
        }
        break;
    default:
        vd_die("%s: tensor %s has dtype %s (expected F32, F16 or BF16)", st->path, t->name, t->dtype_name);
    }
}

void vd_safetensors_read_int(const vd_safetensors *st, const vd_st_tensor *t, int64_t *dst) {
    size_t n = (size_t)vd_st_tensor_numel(t);
    const uint8_t *src = st->data + t->begin;
    const char *d = t->dtype_name;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(d, "U8") == 0) dst[i] = src[i];
        else if (strcmp(d, "I16") == 0) { int16_t v; memcpy(&v, src + 2 * i, 2); dst[i] = v; }
        else if (strcmp(d, "I32") == 0) { int32_t v; memcpy(&v, src + 4 * i, 4); dst[i] = v; }
        else if (strcmp(d, "I64") == 0) { int64_t v; memcpy(&v, src + 8 * i, 8); dst[i] = v; }
        else vd_die("%s: tensor %s has dtype %s (expected U8, I16, I32 or I64)", st->path, t->name, d);
    }
}

void vd_safetensors_close(vd_safetensors *st) {
    if (st->map && munmap(st->map, st->map_size) != 0) vd_warn("%s: munmap failed (%s)", st->path, strerror(errno));
    free(st->tensors);
    memset(st, 0, sizeof(*st));
}

/* ----------------------------------------------------------------------------------------- */
/* writer */

/* A growable byte buffer for the header JSON. */
typedef struct {
    char *buf;
    size_t len, cap;
} vd_strbuf;

static void vd_sb_append(vd_strbuf *sb, const char *s, size_t n) {
    if (sb->len + n + 1 > sb->cap) {
        size_t cap = sb->cap ? sb->cap : 1024;
        while (sb->len + n + 1 > cap) cap *= 2;
        char *p = realloc(sb->buf, cap);
        if (!p) vd_die("out of memory growing a safetensors header to %zu bytes", cap);
        sb->buf = p;
        sb->cap = cap;
    }
    memcpy(sb->buf + sb->len, s, n);
    sb->len += n;
    sb->buf[sb->len] = 0;
}

static void vd_sb_puts(vd_strbuf *sb, const char *s) { vd_sb_append(sb, s, strlen(s)); }

/* A JSON string literal: quotes, backslashes and control characters escaped; other bytes
 * (UTF-8 included) pass through unchanged. */
static void vd_sb_json_string(vd_strbuf *sb, const char *s) {
    vd_sb_puts(sb, "\"");
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[8];
        if (*p == '"' || *p == '\\') {
            esc[0] = '\\';
            esc[1] = (char)*p;
            vd_sb_append(sb, esc, 2);
        } else if (*p < 0x20) {
            snprintf(esc, sizeof(esc), "\\u%04x", *p);
            vd_sb_puts(sb, esc);
        } else {
            vd_sb_append(sb, (const char *)p, 1);
        }
    }
    vd_sb_puts(sb, "\"");
}

void vd_safetensors_write_f32(const char *path, const vd_st_entry *entries, int32_t n, const char *const *meta_kv,
                              int32_t n_meta) {
    vd_require(n >= 0 && n_meta >= 0);
    uint64_t *nbytes = callocCheck((size_t)(n ? n : 1), sizeof(uint64_t));
    vd_strbuf h = {0};
    char num[128];
    vd_sb_puts(&h, "{");
    int first = 1;
    if (n_meta > 0) {
        vd_sb_puts(&h, "\"__metadata__\":{");
        for (int32_t i = 0; i < n_meta; i++) {
            if (i) vd_sb_puts(&h, ",");
            vd_sb_json_string(&h, meta_kv[2 * i]);
            vd_sb_puts(&h, ":");
            vd_sb_json_string(&h, meta_kv[2 * i + 1]);
        }
        vd_sb_puts(&h, "}");
        first = 0;
    }
    uint64_t offset = 0;
    for (int32_t i = 0; i < n; i++) {
        const vd_st_entry *e = &entries[i];
        vd_require(e->name && e->ndim >= 0 && e->ndim <= 4);
        if (strcmp(e->name, "__metadata__") == 0) vd_die("%s: a tensor cannot be named __metadata__", path);
        uint64_t numel = 1;
        for (int32_t d = 0; d < e->ndim; d++) {
            vd_require(e->shape[d] >= 0);
            numel *= (uint64_t)e->shape[d];
        }
        const vd_dtype_info *dt = vd_dtype_lookup(e->dtype ? e->dtype : "F32");
        vd_require(dt != NULL);
        nbytes[i] = numel * dt->size;
        if (!first) vd_sb_puts(&h, ",");
        first = 0;
        vd_sb_json_string(&h, e->name);
        vd_sb_puts(&h, ":{\"dtype\":");
        vd_sb_json_string(&h, dt->name);
        vd_sb_puts(&h, ",\"shape\":[");
        for (int32_t d = 0; d < e->ndim; d++) {
            snprintf(num, sizeof(num), "%s%lld", d ? "," : "", (long long)e->shape[d]);
            vd_sb_puts(&h, num);
        }
        snprintf(num, sizeof(num), "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)offset,
                 (unsigned long long)(offset + nbytes[i]));
        vd_sb_puts(&h, num);
        offset += nbytes[i];
    }
    vd_sb_puts(&h, "}");
    /* pad with spaces so the data section starts 8-byte aligned (8 + header_len, header_len % 8 == 0) */
    while (h.len % 8 != 0) vd_sb_puts(&h, " ");

    uint64_t header_len = h.len;
    uint64_t total = 8 + header_len + offset;
    if (total > (uint64_t)SIZE_MAX) vd_die("%s: %llu bytes do not fit in memory", path, (unsigned long long)total);
    uint8_t *file = mallocCheck((size_t)total);
    memcpy(file, &header_len, 8); /* little-endian host */
    memcpy(file + 8, h.buf, (size_t)header_len);
    uint8_t *p = file + 8 + header_len;
    for (int32_t i = 0; i < n; i++) {
        if (nbytes[i]) memcpy(p, entries[i].dtype ? entries[i].raw : (const void *)entries[i].data, (size_t)nbytes[i]);
        p += nbytes[i];
    }
    vd_write_file_atomic(path, file, (size_t)total);
    free(file);
    free(h.buf);
    free(nbytes);
}
