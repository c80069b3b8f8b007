/* tokenize.c: `vera-dist tokenize`: a model's own tokenizer on the command line, to check ids
 * against Hugging Face (tokenizer.encode(text, add_special_tokens=False) by default) and to
 * turn ids back into text (--decode). */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "vera/cli.h"
#include "vera/common.h"
#include "vera/tokenizer.h"

/* Removes a value-less "--name" from argv; 1 if it was there. */
static int tokenize_take_flag(int *argc, char **argv, const char *name) {
    for (int i = 1; i < *argc; i++) {
        if (strncmp(argv[i], "--", 2) != 0 || strcmp(argv[i] + 2, name) != 0) continue;
        for (int j = i; j + 1 < *argc; j++) argv[j] = argv[j + 1];
        (*argc)--;
        argv[*argc] = NULL;
        return 1;
    }
    return 0;
}

static int tokenize_bool(const char *opt, const char *v, int dflt) {
    if (!v) return dflt;
    if (!strcmp(v, "1") || !strcmp(v, "true")) return 1;
    if (!strcmp(v, "0") || !strcmp(v, "false")) return 0;
    vd_die("--%s: '%s' is not 0 or 1", opt, v);
}

/* The whole of a regular file (an empty file is fine). */
static char *tokenize_read_file(const char *path, size_t *n_out) {
    int fd = vd_open_regular_as("--in", path, "a text file");
    size_t cap = 1 << 16, n = 0;
    char *buf = mallocCheck(cap + 1);
    for (;;) {
        if (n == cap) {
            cap *= 2;
            buf = realloc(buf, cap + 1);
            if (!buf) vd_die("--in %s: out of memory", path);
        }
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0) {
            if (errno == EINTR) continue;
            vd_die("--in %s: read failed (%s)", path, strerror(errno));
        }
        if (r == 0) break;
        n += (size_t)r;
    }
    close(fd);
    buf[n] = 0;
    *n_out = n;
    return buf;
}

/* Offset of the first byte that is not part of valid UTF-8, or n. */
static size_t tokenize_utf8_problem(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (len == 0 || i + len > n) return i;
        uint32_t cp = len == 1 ? c : c & (0x3Fu >> (len - 1));
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return i;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        static const uint32_t min_of_len[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min_of_len[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
        i += len;
    }
    return n;
}

/* Length of the valid UTF-8 character at s[0..n), or 0; *prefix = how many bytes form the
 * longest start of a valid character (Unicode's "maximal subpart", replaced by one U+FFFD, as
 * Rust's from_utf8_lossy and so tokenizers' decode do). */
static size_t tokenize_utf8_char(const unsigned char *s, size_t n, size_t *prefix) {
    unsigned c = s[0];
    size_t len = c < 0x80 ? 1 : (c >= 0xC2 && c <= 0xDF) ? 2 : (c >= 0xE0 && c <= 0xEF) ? 3 : (c >= 0xF0 && c <= 0xF4) ? 4 : 0;
    *prefix = 1;
    if (len <= 1) return len;
    unsigned lo = 0x80, hi = 0xBF; /* the second byte's range */
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
    for (size_t k = 1; k < len; k++) {
        if (k >= n) return 0;
        unsigned b = s[k];
        if (k == 1 ? (b < lo || b > hi) : (b & 0xC0) != 0x80) return 0;
        *prefix = k + 1;
    }
    return len;
}

/* s[0..n) as a JSON string; invalid UTF-8 becomes U+FFFD as Hugging Face's decode gives it. */
static void tokenize_print_json_string(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    putchar('"');
    size_t i = 0;
    while (i < n) {
        size_t prefix, len = tokenize_utf8_char(u + i, n - i, &prefix);
        if (len == 0) { fputs("\ufffd", stdout); i += prefix; continue; }
        unsigned c = u[i];
        if (len > 1) fwrite(s + i, 1, len, stdout);
        else if (c == '"') fputs("\\\"", stdout);
        else if (c == '\\') fputs("\\\\", stdout);
        else if (c == '\n') fputs("\\n", stdout);
        else if (c == '\t') fputs("\\t", stdout);
        else if (c == '\r') fputs("\\r", stdout);
        else if (c < 0x20 || c == 0x7F) printf("\\u%04x", c);
        else putchar((int)c);
        i += len;
    }
    putchar('"');
}

static void tokenize_print_list(const char *name, const void *v, size_t n, int is_u32, int json) {
    if (json && name) printf("\"%s\": [", name);
    else if (json) printf("[");
    for (size_t i = 0; i < n; i++) {
        long long x = is_u32 ? (long long)((const uint32_t *)v)[i] : (long long)((const int32_t *)v)[i];
        printf(i ? (json ? ", %lld" : " %lld") : "%lld", x);
    }
    if (json) printf("]");
}

/* ids written as "1 2 3", "1,2,3" or "[1, 2, 3]" */
static int32_t *tokenize_parse_ids(const char *s, const char *what, int32_t vocab, size_t *n_out) {
    size_t cap = 64, n = 0;
    int32_t *ids = mallocCheck(cap * sizeof(int32_t));
    const char *p = s;
    while (*p) {
        if (strchr(" \t\r\n,[]", *p)) { p++; continue; }
        char *end;
        errno = 0;
        long long v = strtoll(p, &end, 10);
        if (end == p || errno || (*end && !strchr(" \t\r\n,[]", *end))) {
            int len = 0;
            while (p[len] && !strchr(" \t\r\n,[]", p[len]) && len < 40) len++;
            vd_die("%s: '%.*s' is not a token id (expected integers separated by spaces or commas)", what, len, p);
        }
        if (v < 0 || v >= vocab) vd_die("%s: token id %lld is out of range (the tokenizer has ids 0..%d)", what, v, (int)vocab - 1);
        if (n == cap) {
            cap *= 2;
            ids = realloc(ids, cap * sizeof(int32_t));
            if (!ids) vd_die("%s: out of memory", what);
        }
        ids[n++] = (int32_t)v;
        p = end;
    }
    *n_out = n;
    return ids;
}

/* One encode, printed as the options ask (one line; with offsets and without --json, two). */
static void tokenize_encode_print(const vd_tokenizer *t, const char *text, size_t n, int add_special, int offsets,
                                  int json) {
    vd_tokens toks = {0};
    vd_tokenizer_encode(t, text, n, (add_special ? VD_TOK_ADD_SPECIAL : 0) | (offsets ? VD_TOK_WITH_OFFSETS : 0), &toks);
    if (json && offsets) {
        printf("{");
        tokenize_print_list("ids", toks.ids, toks.n, 0, 1);
        printf(", ");
        tokenize_print_list("offsets", toks.offsets, toks.n, 1, 1);
        printf("}\n");
    } else {
        tokenize_print_list(NULL, toks.ids, toks.n, 0, json);
        printf("\n");
        if (offsets) {
            tokenize_print_list(NULL, toks.offsets, toks.n, 1, 0);
            printf("\n");
        }
    }
    vd_tokens_free(&toks);
}

static void tokenize_decode_print(const vd_tokenizer *t, const int32_t *ids, size_t k, int skip_special, int json) {
    size_t len;
    char *s = vd_tokenizer_decode(t, ids, k, skip_special, &len);
    if (json) {
        tokenize_print_json_string(s, len);
        printf("\n");
    } else {
        fwrite(s, 1, len, stdout);
    }
    free(s);
}

/* --jsonl: every line of the input is one JSON string (encode) or one JSON list of ids (decode);
 * one JSON line out per line in. */
static void tokenize_jsonl(const vd_tokenizer *t, char *input, size_t n, const char *what, int decode, int add_special,
                           int offsets, int skip_special) {
    size_t line = 0;
    char *p = input, *end = input + n;
    while (p < end) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        char *e = nl ? nl : end;
        line++;
        char saved = *e;
        *e = 0;
        const char *q = p;
        while (*q == ' ' || *q == '\t' || *q == '\r') q++;
        if (*q) {
            cJSON *v = cJSON_Parse(p);
            if (!v) vd_die("%s line %zu: not JSON", what, line);
            if (!decode) {
                if (!cJSON_IsString(v)) vd_die("%s line %zu: expected a JSON string (the text to encode)", what, line);
                size_t len = strlen(v->valuestring);
                size_t bad = tokenize_utf8_problem((const unsigned char *)v->valuestring, len);
                if (bad < len) vd_die("%s line %zu: not UTF-8 text (invalid byte at offset %zu)", what, line, bad);
                tokenize_encode_print(t, v->valuestring, len, add_special, offsets, 1);
            } else {
                if (!cJSON_IsArray(v)) vd_die("%s line %zu: expected a JSON list of token ids", what, line);
                size_t k = 0, cap = (size_t)cJSON_GetArraySize(v) + 1;
                int32_t *ids = mallocCheck(cap * sizeof(int32_t));
                const cJSON *it;
                cJSON_ArrayForEach(it, v) {
                    if (!cJSON_IsNumber(it) || it->valuedouble != (double)(int64_t)it->valuedouble || it->valuedouble < 0 ||
                        it->valuedouble >= vd_tokenizer_vocab_size(t))
                        vd_die("%s line %zu: item %zu is not a token id in 0..%d", what, line, k,
                               (int)vd_tokenizer_vocab_size(t) - 1);
                    ids[k++] = (int32_t)it->valuedouble;
                }
                tokenize_decode_print(t, ids, k, skip_special, 1);
                free(ids);
            }
            cJSON_Delete(v);
        }
        *e = saved;
        p = nl ? nl + 1 : end;
    }
}

/* --info: what the tokenizer is (for scripts and tests), one JSON object. */
static void tokenize_info(const vd_tokenizer *t) {
    int32_t v = vd_tokenizer_vocab_size(t);
    printf("{\"vocab_size\": %d, \"bos_id\": %d, \"eos_id\": %d, \"bos\": ", (int)v, (int)vd_tokenizer_bos(t),
           (int)vd_tokenizer_eos(t));
    tokenize_print_json_string(vd_tokenizer_bos_text(t), strlen(vd_tokenizer_bos_text(t)));
    printf(", \"eos\": ");
    tokenize_print_json_string(vd_tokenizer_eos_text(t), strlen(vd_tokenizer_eos_text(t)));
    printf(", \"special_ids\": [");
    int first = 1;
    for (int32_t i = 0; i < v; i++)
        if (vd_tokenizer_is_special(t, i)) { printf(first ? "%d" : ", %d", (int)i); first = 0; }
    printf("], \"chat_template\": ");
    const char *ct = vd_tokenizer_chat_template(t);
    if (ct) tokenize_print_json_string(ct, strlen(ct));
    else printf("null");
    printf("}\n");
}

int vd_tokenize_main(int argc, char **argv) {
    if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf("usage: vera-dist tokenize --tokenizer DIR|tokenizer.json|FILE.gguf (--text STR | --in FILE)\n"
               "                          [--json] [--offsets] [--add_special_tokens 0|1] [--jsonl]\n"
               "       vera-dist tokenize --tokenizer PATH --decode (--text IDS | --in FILE) [--json] [--skip_special 0|1]\n"
               "       vera-dist tokenize --tokenizer PATH --info\n"
               "Prints the token ids of the text (space-separated; --json: a JSON list), as Hugging Face's\n"
               "tokenizer.encode(text, add_special_tokens=False): special tokens written in the text are\n"
               "recognised. --add_special_tokens 1 adds what tokenizer(text) adds (a BOS, ...). --offsets also\n"
               "prints the byte offset in the text where each token starts (a second line; --json: an object\n"
               "{\"ids\": [...], \"offsets\": [...]}). --decode reads ids (spaces or commas) and writes their text\n"
               "(as is; --json: a JSON string). --jsonl: every input line is a JSON string (a JSON list of ids\n"
               "with --decode), one JSON line out for each. --info: vocabulary size, bos / eos, special ids and\n"
               "the chat template as JSON. The text must be UTF-8. See docs/tokenizer.md.\n");
        return 0;
    }
    int json = tokenize_take_flag(&argc, argv, "json");
    int decode = tokenize_take_flag(&argc, argv, "decode");
    int offsets = tokenize_take_flag(&argc, argv, "offsets");
    int jsonl = tokenize_take_flag(&argc, argv, "jsonl");
    int info = tokenize_take_flag(&argc, argv, "info");
    const char *path = vd_cli_take_option(&argc, argv, "tokenizer");
    const char *text = vd_cli_take_option(&argc, argv, "text");
    const char *in = vd_cli_take_option(&argc, argv, "in");
    const char *add_opt = vd_cli_take_option(&argc, argv, "add_special_tokens");
    const char *skip_opt = vd_cli_take_option(&argc, argv, "skip_special");
    int add_special = tokenize_bool("add_special_tokens", add_opt, 0);
    int skip_special = tokenize_bool("skip_special", skip_opt, 0);
    if (argc > 1) vd_die("tokenize: unexpected argument '%s' (see vera-dist tokenize --help)", argv[1]);
    if (!path) vd_die("tokenize: --tokenizer PATH is required (a directory with tokenizer.json, a tokenizer.json or a .gguf)");
    if (info) {
        if (text || in || decode || jsonl) vd_die("tokenize: --info takes only --tokenizer");
        vd_tokenizer *t = vd_tokenizer_load(path);
        tokenize_info(t);
        vd_tokenizer_free(t);
        return 0;
    }
    if (!text == !in) vd_die("tokenize: give exactly one of --text STR and --in FILE");
    if (decode && (add_opt || offsets)) vd_die("tokenize: --decode takes neither --add_special_tokens nor --offsets");
    if (!decode && skip_opt) vd_die("tokenize: --skip_special goes with --decode");

    size_t n;
    char *owned = NULL;
    if (in) {
        owned = tokenize_read_file(in, &n);
    } else {
        n = strlen(text);
        owned = mallocCheck(n + 1);
        memcpy(owned, text, n + 1);
    }
    char what[VD_PATH_MAX + 8];
    snprintf(what, sizeof(what), in ? "--in %s" : "--text", in);
    if (!decode && !jsonl) {
        size_t bad = tokenize_utf8_problem((const unsigned char *)owned, n);
        if (bad < n) vd_die("%s: not UTF-8 text (invalid byte 0x%02x at offset %zu)", what, (unsigned)(unsigned char)owned[bad], bad);
    }

    vd_tokenizer *t = vd_tokenizer_load(path);
    if (jsonl) {
        tokenize_jsonl(t, owned, n, what, decode, add_special, offsets, skip_special);
    } else if (decode) {
        size_t k;
        int32_t *ids = tokenize_parse_ids(owned, what, vd_tokenizer_vocab_size(t), &k);
        tokenize_decode_print(t, ids, k, skip_special, json);
        free(ids);
    } else {
        tokenize_encode_print(t, owned, n, add_special, offsets, json);
    }
    if (fflush(stdout) != 0) vd_die("tokenize: writing to stdout failed (%s)", strerror(errno));
    vd_tokenizer_free(t);
    free(owned);
    return 0;
}
