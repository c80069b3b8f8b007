/* tokenizer.c: byte-level BPE as Hugging Face `tokenizers` runs it for GPT-2, SmolLM2, Llama 3
 * and Qwen2, read from a tokenizer.json or from a GGUF's tokenizer metadata.
 *
 * Encoding, in the order tokenizers applies it:
 *   1. added tokens written in the text are split out (leftmost-longest; first the tokens with
 *      normalized=false, then in the remaining text those with normalized=true);
 *   2. each remaining segment goes through the pre-tokenizer steps (Split / Digits, with PCRE2
 *      for the regexes), the last step being ByteLevel (prefix space, GPT-2 regex);
 *   3. each piece is BPE-merged on its bytes: ranks from a pair -> (rank, merged id) hash map,
 *      lowest rank first, leftmost among equal ranks (a binary heap over positions, so a long
 *      piece costs n log n, not n^2); short pieces are cached.
 * Everything is done on bytes: the byte-level alphabet (GPT-2's bytes_to_unicode, "Ġ" for a
 * space) exists only where vocab / merges are read and token ids are looked up by name.
 *
 * Encoding is not safe to call on one tokenizer from two threads at once (the piece cache);
 * give each thread its own tokenizer. */
#define _POSIX_C_SOURCE 200809L
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "vera/common.h"
#include "vera/gguf.h"
#include "vera/tokenizer.h"

/* ----------------------------------------------------------------------------------------- */
/* the byte-level alphabet (GPT-2's bytes_to_unicode): printable Latin-1 bytes stand for
 * themselves, the other 68 bytes for U+0100..U+0143, so every byte is one visible character */

static uint32_t tok_byte_cp[256];   /* byte -> code point */
static int16_t tok_cp_byte[324];    /* code point -> byte, -1 if not in the alphabet */

static void tok_alphabet_init(void) {
    if (tok_byte_cp['!']) return;
    for (int i = 0; i < 324; i++) tok_cp_byte[i] = -1;
    int n = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        tok_byte_cp[b] = printable ? (uint32_t)b : (uint32_t)(256 + n++);
    }
    for (int b = 0; b < 256; b++) tok_cp_byte[tok_byte_cp[b]] = (int16_t)b;
}

/* Next code point of s[*i..n) (advances *i); invalid UTF-8 gives -1 and advances one byte. */
static int32_t tok_utf8_next(const char *s, size_t n, size_t *i) {
    const unsigned char *u = (const unsigned char *)s + *i;
    size_t left = n - *i;
    uint32_t c = u[0];
    int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (len == 0 || (size_t)len > left) { (*i)++; return -1; }
    if (len == 1) { (*i)++; return (int32_t)c; }
    c &= 0x3F >> (len - 1);
    for (int k = 1; k < len; k++) {
        if ((u[k] & 0xC0) != 0x80) { (*i)++; return -1; }
        c = (c << 6) | (u[k] & 0x3F);
    }
    static const uint32_t min_of_len[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (c < min_of_len[len] || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) { (*i)++; return -1; }
    *i += (size_t)len;
    return (int32_t)c;
}

static size_t tok_utf8_put(char *out, uint32_t c) {
    if (c < 0x80) { out[0] = (char)c; return 1; }
    if (c < 0x800) { out[0] = (char)(0xC0 | (c >> 6)); out[1] = (char)(0x80 | (c & 0x3F)); return 2; }
    if (c < 0x10000) {
        out[0] = (char)(0xE0 | (c >> 12)); out[1] = (char)(0x80 | ((c >> 6) & 0x3F)); out[2] = (char)(0x80 | (c & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (c >> 18)); out[1] = (char)(0x80 | ((c >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((c >> 6) & 0x3F)); out[3] = (char)(0x80 | (c & 0x3F));
    return 4;
}

/* The bytes a token's text stands for, as the ByteLevel decoder reads it: when every character
 * is in the alphabet, one byte per character; otherwise the text's own UTF-8 (an added token
 * such as "<|im_start|>" is plain ASCII and maps to itself either way). Writes at most n bytes
 * to out; returns the length and sets *spelled to 1 when the text was all alphabet. */
static size_t tok_unspell(const char *s, size_t n, char *out, int *spelled) {
    size_t i = 0, m = 0;
    while (i < n) {
        int32_t c = tok_utf8_next(s, n, &i);
        if (c < 0 || c >= 324 || tok_cp_byte[c] < 0) {
            memcpy(out, s, n);
            *spelled = 0;
            return n;
        }
        out[m++] = (char)tok_cp_byte[c];
    }
    *spelled = 1;
    return m;
}

/* ----------------------------------------------------------------------------------------- */
/* hash maps (open addressing, power-of-two capacity, linear probing) */

static uint64_t tok_hash(const void *p, size_t n) { return vd_hash64(p, n, 0x9E3779B97F4A7C15ull) | 1; }

/* bytes -> int32 (keys are copied into the map's own arena) */
typedef struct {
    uint64_t *hash;   /* 0 = empty */
    uint32_t *koff, *klen;
    int32_t *val;
    size_t cap, n;
    char *arena;
    size_t arena_n, arena_cap;
} tok_strmap;

static void tok_strmap_init(tok_strmap *m, size_t expect) {
    memset(m, 0, sizeof(*m));
    m->cap = 64;
    while (m->cap < 2 * expect + 2) m->cap <<= 1;
    m->hash = callocCheck(m->cap, sizeof(uint64_t));
    m->koff = mallocCheck(m->cap * sizeof(uint32_t));
    m->klen = mallocCheck(m->cap * sizeof(uint32_t));
    m->val = mallocCheck(m->cap * sizeof(int32_t));
}

static void tok_strmap_free(tok_strmap *m) {
    free(m->hash); free(m->koff); free(m->klen); free(m->val); free(m->arena);
    memset(m, 0, sizeof(*m));
}

static size_t tok_strmap_slot(const tok_strmap *m, const char *k, size_t n, uint64_t h) {
    size_t i = (size_t)h & (m->cap - 1);
    while (m->hash[i]) {
        if (m->hash[i] == h && m->klen[i] == n && !memcmp(m->arena + m->koff[i], k, n)) return i;
        i = (i + 1) & (m->cap - 1);
    }
    return i;
}

static int32_t tok_strmap_get(const tok_strmap *m, const char *k, size_t n) {
    size_t i = tok_strmap_slot(m, k, n, tok_hash(k, n));
    return m->hash[i] ? m->val[i] : -1;
}

static void tok_strmap_grow(tok_strmap *m);

/* Sets k -> v (a later set of the same key wins, as a Python dict built in order). */
static void tok_strmap_set(tok_strmap *m, const char *k, size_t n, int32_t v) {
    if (2 * (m->n + 1) > m->cap) tok_strmap_grow(m);
    uint64_t h = tok_hash(k, n);
    size_t i = tok_strmap_slot(m, k, n, h);
    if (m->hash[i]) { m->val[i] = v; return; }
    if (n > UINT32_MAX || m->arena_n + n > UINT32_MAX) vd_die("tokenizer: vocabulary too large (over 4 GB of token text)");
    if (m->arena_n + n > m->arena_cap) {
        m->arena_cap = 2 * (m->arena_n + n) + 4096;
        m->arena = realloc(m->arena, m->arena_cap);
        if (!m->arena) vd_die("tokenizer: out of memory");
    }
    memcpy(m->arena + m->arena_n, k, n);
    m->hash[i] = h; m->koff[i] = (uint32_t)m->arena_n; m->klen[i] = (uint32_t)n; m->val[i] = v;
    m->arena_n += n;
    m->n++;
}

static void tok_strmap_grow(tok_strmap *m) {
    tok_strmap old = *m;
    m->cap = old.cap * 2;
    m->hash = callocCheck(m->cap, sizeof(uint64_t));
    m->koff = mallocCheck(m->cap * sizeof(uint32_t));
    m->klen = mallocCheck(m->cap * sizeof(uint32_t));
    m->val = mallocCheck(m->cap * sizeof(int32_t));
    for (size_t i = 0; i < old.cap; i++) {
        if (!old.hash[i]) continue;
        size_t j = tok_strmap_slot(m, old.arena + old.koff[i], old.klen[i], old.hash[i]);
        m->hash[j] = old.hash[i]; m->koff[j] = old.koff[i]; m->klen[j] = old.klen[i]; m->val[j] = old.val[i];
    }
    free(old.hash); free(old.koff); free(old.klen); free(old.val);
}

/* (left id, right id) -> (rank, merged id) */
typedef struct {
    uint64_t *key;    /* UINT64_MAX = empty */
    int32_t *rank, *merged;
    size_t cap, n;
} tok_pairmap;

static uint64_t tok_pair_key(int32_t a, int32_t b) { return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b; }
static size_t tok_pair_slot0(const tok_pairmap *m, uint64_t k) {
    uint64_t h = k * 0x9E3779B97F4A7C15ull;
    return (size_t)(h ^ (h >> 29)) & (m->cap - 1);
}

static void tok_pairmap_init(tok_pairmap *m, size_t expect) {
    m->cap = 64;
    while (m->cap < 2 * expect + 2) m->cap <<= 1;
    m->key = mallocCheck(m->cap * sizeof(uint64_t));
    memset(m->key, 0xFF, m->cap * sizeof(uint64_t));
    m->rank = mallocCheck(m->cap * sizeof(int32_t));
    m->merged = mallocCheck(m->cap * sizeof(int32_t));
    m->n = 0;
}

static void tok_pairmap_free(tok_pairmap *m) { free(m->key); free(m->rank); free(m->merged); memset(m, 0, sizeof(*m)); }

/* Returns the slot of (a, b); *found says whether it holds the pair. */
static size_t tok_pairmap_find(const tok_pairmap *m, int32_t a, int32_t b, int *found) {
    uint64_t k = tok_pair_key(a, b);
    size_t i = tok_pair_slot0(m, k);
    while (m->key[i] != UINT64_MAX) {
        if (m->key[i] == k) { *found = 1; return i; }
        i = (i + 1) & (m->cap - 1);
    }
    *found = 0;
    return i;
}

/* ----------------------------------------------------------------------------------------- */
/* the tokenizer */

enum { TOK_STEP_SPLIT, TOK_STEP_DIGITS };
enum { TOK_REMOVED, TOK_ISOLATED, TOK_MERGED_PREV, TOK_MERGED_NEXT, TOK_CONTIGUOUS };

typedef struct {
    int kind;            /* TOK_STEP_* */
    pcre2_code *re;      /* the split pattern (Digits: one \p{N} character) */
    int behavior;        /* TOK_REMOVED ... */
    int invert;
} tok_step;

typedef struct {
    char *content;       /* the text that stands for it (NUL-terminated) */
    size_t len;
    int32_t id;
    int special, lstrip, rstrip, single_word, normalized;
} tok_added;

#define TOK_CACHE_MAX_PIECE 256   /* bytes; longer pieces are not cached (tokenizers: 256 chars) */
#define TOK_CACHE_MAX_WORDS 10000 /* tokenizers' default capacity; the cache is cleared when full */

struct vd_tokenizer {
    char path[VD_PATH_MAX];
    int32_t n_ids;               /* ids are < n_ids */
    /* per id: the bytes it decodes to (into bytes_arena), -1 offset for an unused id */
    int64_t *bytes_off;
    uint32_t *bytes_len;
    char *bytes_arena;
    size_t bytes_n, bytes_cap;
    uint8_t *special;            /* per id: 1 for a special added token */

    tok_strmap vocab;            /* the model's vocabulary by its spelled name ("Ġthe") */
    tok_strmap vocab_bytes;      /* by the bytes of a name written all in the alphabet (ignore_merges) */
    int32_t byte_id[256];        /* the id of each single byte, -1 if the vocabulary lacks it */
    tok_pairmap merges;
    int ignore_merges;
    int32_t unk_id;              /* -1: bytes the vocabulary lacks are dropped, as tokenizers does */
    int fuse_unk;

    tok_added *added;            /* sorted by id */
    int32_t n_added;
    tok_strmap added_by_text;
    /* candidates by first byte, for the two passes (normalized = 0, then 1): indices into added */
    int32_t *first_start[2];     /* (257) */
    int32_t *first_list[2];

    tok_step *steps;
    int n_steps;
    pcre2_code *bytelevel_re;    /* ByteLevel's GPT-2 regex, NULL when use_regex is false */
    int add_prefix_space;
    pcre2_code *ws_re, *word_re; /* one White_Space / word character (lstrip, rstrip, single_word) */

    int32_t *post_prefix, *post_suffix; /* what VD_TOK_ADD_SPECIAL adds around the ids */
    int n_post_prefix, n_post_suffix;

    int32_t bos, eos;
    char *bos_text, *eos_text, *chat_template;

    /* the piece cache: piece bytes -> offset of (count, id, start, id, start, ...) in cache_vals */
    tok_strmap cache;
    int32_t *cache_vals;
    size_t cache_vals_n, cache_vals_cap;
};

/* GPT-2's pre-tokenizer regex (ByteLevel use_regex = true) */
static const char *TOK_GPT2_REGEX =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/* The Split regexes transformers puts in front of ByteLevel when it converts a GGUF, by the
 * file's tokenizer.ggml.pre (transformers/integrations/gguf/gguf_tokenizer_mapping.py,
 * GGUF_PRE_TOKENIZER_SPLITS); any other value keeps GPT-2's ByteLevel regex, as there. */
static const char *TOK_LLAMA3_SPLIT =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"
    "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char *TOK_TEKKEN_SPLIT =
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+"
    "|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*"
    "|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char *TOK_GPT4O_SPLIT =
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    "|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    "|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char *TOK_QWEN2_SPLIT =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+"
    "|\\s+(?!\\S)|\\s+";
static const char *TOK_QWEN35_SPLIT =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

static const struct { const char *pre; const char **regex; } TOK_GGUF_SPLITS[] = {
    {"llama3", &TOK_LLAMA3_SPLIT}, {"llama-v3", &TOK_LLAMA3_SPLIT}, {"llama-bpe", &TOK_LLAMA3_SPLIT},
    {"falcon3", &TOK_LLAMA3_SPLIT}, {"falcon-h1", &TOK_LLAMA3_SPLIT}, {"pixtral", &TOK_LLAMA3_SPLIT},
    {"midm-2.0", &TOK_LLAMA3_SPLIT}, {"lfm2", &TOK_LLAMA3_SPLIT}, {"jina-v5-nano", &TOK_LLAMA3_SPLIT},
    {"dbrx", &TOK_LLAMA3_SPLIT}, {"smaug-bpe", &TOK_LLAMA3_SPLIT}, {"tekken", &TOK_TEKKEN_SPLIT},
    {"qwen2", &TOK_QWEN2_SPLIT}, {"deepseek-r1-qwen", &TOK_QWEN2_SPLIT}, {"kormo", &TOK_QWEN2_SPLIT},
    {"f2llmv2", &TOK_QWEN2_SPLIT}, {"megrez", &TOK_QWEN2_SPLIT}, {"qwen35", &TOK_QWEN35_SPLIT},
    {"gpt-4o", &TOK_GPT4O_SPLIT}, {"llama4", &TOK_GPT4O_SPLIT}, {"kanana2", &TOK_GPT4O_SPLIT},
    {"talkie", &TOK_GPT4O_SPLIT}, {"minimax-m2", &TOK_GPT4O_SPLIT},
};

/* tokenizers runs its regexes with Oniguruma, where \s is Unicode's White_Space; PCRE2's \s
 * (with UCP) also takes U+180E. Rewrites \s / \S to the property so both agree. */
static char *tok_regex_rewrite(const char *pat, size_t n, size_t *out_n) {
    char *out = mallocCheck(n * 16 + 1);
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (pat[i] == '\\' && i + 1 < n) {
            if (pat[i + 1] == 's') { memcpy(out + m, "\\p{White_Space}", 15); m += 15; i++; continue; }
            if (pat[i + 1] == 'S') { memcpy(out + m, "\\P{White_Space}", 15); m += 15; i++; continue; }
            out[m++] = pat[i++];
        }
        out[m++] = pat[i];
    }
    out[m] = 0;
    *out_n = m;
    return out;
}

static pcre2_code *tok_regex_compile(const char *path, const char *pat, size_t n, int literal, const char *what) {
    int err;
    PCRE2_SIZE at;
    size_t rn = n;
    char *rw = literal ? NULL : tok_regex_rewrite(pat, n, &rn);
    uint32_t opts = PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF | (literal ? PCRE2_LITERAL : 0);
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)(literal ? pat : rw), rn, opts, &err, &at, NULL);
    free(rw);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof(msg));
        vd_die("%s: %s regex does not compile with PCRE2 (%s at offset %zu): %.*s", path, what, (const char *)msg,
               (size_t)at, (int)(n > 200 ? 200 : n), pat);
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* falls back to the interpreter where JIT is missing */
    return re;
}

/* ---- building ---- */

static void tok_set_bytes(vd_tokenizer *t, int32_t id, const char *b, size_t n) {
    if (t->bytes_n + n > t->bytes_cap) {
        t->bytes_cap = 2 * (t->bytes_n + n) + 4096;
        t->bytes_arena = realloc(t->bytes_arena, t->bytes_cap);
        if (!t->bytes_arena) vd_die("tokenizer: out of memory");
    }
    memcpy(t->bytes_arena + t->bytes_n, b, n);
    t->bytes_off[id] = (int64_t)t->bytes_n;
    t->bytes_len[id] = (uint32_t)n;
    t->bytes_n += n;
}

static vd_tokenizer *tok_new(const char *path, int32_t n_ids) {
    tok_alphabet_init();
    vd_tokenizer *t = callocCheck(1, sizeof(*t));
    snprintf(t->path, sizeof(t->path), "%s", path);
    t->n_ids = n_ids;
    t->bytes_off = mallocCheck((size_t)n_ids * sizeof(int64_t));
    for (int32_t i = 0; i < n_ids; i++) t->bytes_off[i] = -1;
    t->bytes_len = callocCheck((size_t)n_ids, sizeof(uint32_t));
    t->special = callocCheck((size_t)n_ids, 1);
    t->bos = t->eos = -1;
    t->unk_id = -1;
    for (int b = 0; b < 256; b++) t->byte_id[b] = -1;
    tok_strmap_init(&t->cache, TOK_CACHE_MAX_WORDS);
    tok_strmap_init(&t->added_by_text, 64);
    t->ws_re = tok_regex_compile(path, "\\p{White_Space}", 15, 0, "internal");
    /* tokenizers' single_word test: char::is_alphanumeric() or '_' */
    t->word_re = tok_regex_compile(path, "[\\p{Alphabetic}\\p{N}_]", 22, 0, "internal");
    return t;
}

/* A vocabulary entry: name (spelled in the alphabet) -> id. */
static void tok_add_vocab(vd_tokenizer *t, const char *name, size_t n, int32_t id) {
    tok_strmap_set(&t->vocab, name, n, id);
    char *b = mallocCheck(n + 1);
    int spelled;
    size_t bn = tok_unspell(name, n, b, &spelled);
    tok_set_bytes(t, id, b, bn);
    if (spelled) {
        tok_strmap_set(&t->vocab_bytes, b, bn, id);
        if (bn == 1) t->byte_id[(unsigned char)b[0]] = id;
    }
    free(b);
}

/* A merge "left right" (spelled names) of rank r. */
static void tok_add_merge(vd_tokenizer *t, const char *a, size_t an, const char *b, size_t bn, int32_t rank) {
    int32_t ia = tok_strmap_get(&t->vocab, a, an), ib = tok_strmap_get(&t->vocab, b, bn);
    char *ab = mallocCheck(an + bn + 1);
    memcpy(ab, a, an);
    memcpy(ab + an, b, bn);
    int32_t im = tok_strmap_get(&t->vocab, ab, an + bn);
    free(ab);
    if (ia < 0 || ib < 0 || im < 0)
        vd_die("%s: merge %d '%.*s %.*s' names a token that is not in the vocabulary (%s)", t->path, (int)rank,
               (int)(an > 80 ? 80 : an), a, (int)(bn > 80 ? 80 : bn), b,
               ia < 0 ? "its left part" : ib < 0 ? "its right part" : "the merged token");
    int found;
    size_t s = tok_pairmap_find(&t->merges, ia, ib, &found);
    if (found) return; /* tokenizers keeps the first (best) rank of a repeated pair */
    t->merges.key[s] = tok_pair_key(ia, ib);
    t->merges.rank[s] = rank;
    t->merges.merged[s] = im;
    t->merges.n++;
}

static void tok_add_added(vd_tokenizer *t, const char *content, size_t n, int32_t id, int special, int lstrip,
                          int rstrip, int single_word, int normalized) {
    if (n == 0) vd_die("%s: added token %d has empty content", t->path, (int)id);
    if (id < 0 || id >= t->n_ids) vd_die("%s: added token id %d is out of range", t->path, (int)id);
    t->added = realloc(t->added, (size_t)(t->n_added + 1) * sizeof(tok_added));
    if (!t->added) vd_die("tokenizer: out of memory");
    tok_added *a = &t->added[t->n_added++];
    a->content = mallocCheck(n + 1);
    memcpy(a->content, content, n);
    a->content[n] = 0;
    a->len = n; a->id = id; a->special = special; a->lstrip = lstrip; a->rstrip = rstrip;
    a->single_word = single_word; a->normalized = normalized;
    if (special) t->special[id] = 1;
    /* the added token's text is what decode gives for it (tokenizers looks added tokens up first) */
    char *b = mallocCheck(n + 1);
    int spelled;
    size_t bn = tok_unspell(content, n, b, &spelled);
    tok_set_bytes(t, id, b, bn);
    free(b);
    tok_strmap_set(&t->added_by_text, content, n, id);
}

/* The per-first-byte candidate lists of both matching passes. */
static void tok_index_added(vd_tokenizer *t) {
    for (int pass = 0; pass < 2; pass++) {
        int32_t *start = callocCheck(257, sizeof(int32_t));
        for (int32_t i = 0; i < t->n_added; i++)
            if (t->added[i].normalized == pass) start[(unsigned char)t->added[i].content[0] + 1]++;
        for (int b = 0; b < 256; b++) start[b + 1] += start[b];
        int32_t *list = mallocCheck((size_t)(start[256] + 1) * sizeof(int32_t));
        int32_t fill[256];
        for (int b = 0; b < 256; b++) fill[b] = start[b];
        for (int32_t i = 0; i < t->n_added; i++)
            if (t->added[i].normalized == pass) list[fill[(unsigned char)t->added[i].content[0]]++] = i;
        t->first_start[pass] = start;
        t->first_list[pass] = list;
    }
}

static int32_t tok_lookup_text(const vd_tokenizer *t, const char *s, size_t n) {
    int32_t id = tok_strmap_get(&t->added_by_text, s, n);
    return id >= 0 ? id : tok_strmap_get(&t->vocab, s, n);
}

/* ---- tokenizer.json ---- */

static char *tok_read_file(const char *path, size_t *n_out, const char *what) {
    size_t n;
    void *map = vd_mmap_file(path, 1, what, &n);
    char *s = mallocCheck(n + 1);
    memcpy(s, map, n);
    s[n] = 0;
    munmap(map, n);
    if (n_out) *n_out = n;
    return s;
}

static int tok_json_bool(const cJSON *o, const char *key, int dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v)) return dflt;
    return cJSON_IsTrue(v);
}

static const char *tok_json_str(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static const char *tok_json_type(const char *path, const cJSON *o, const char *what) {
    const char *ty = tok_json_str(o, "type");
    if (!ty) vd_die("%s: %s has no \"type\"", path, what);
    return ty;
}

static void tok_add_step(vd_tokenizer *t, int kind, pcre2_code *re, int behavior, int invert) {
    t->steps = realloc(t->steps, (size_t)(t->n_steps + 1) * sizeof(tok_step));
    if (!t->steps) vd_die("tokenizer: out of memory");
    t->steps[t->n_steps++] = (tok_step){kind, re, behavior, invert};
}

/* One pre-tokenizer (not a Sequence). *bytelevel_seen: ByteLevel must come last. */
static void tok_json_pretok(vd_tokenizer *t, const cJSON *p, int *bytelevel_seen) {
    const char *ty = tok_json_type(t->path, p, "pre_tokenizer");
    if (*bytelevel_seen)
        vd_die("%s: pre_tokenizer %s after ByteLevel is not supported (ByteLevel must be the last step)", t->path, ty);
    if (!strcmp(ty, "ByteLevel")) {
        *bytelevel_seen = 1;
        t->add_prefix_space = tok_json_bool(p, "add_prefix_space", 1);
        if (tok_json_bool(p, "use_regex", 1))
            t->bytelevel_re = tok_regex_compile(t->path, TOK_GPT2_REGEX, strlen(TOK_GPT2_REGEX), 0, "ByteLevel");
    } else if (!strcmp(ty, "Split")) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(p, "pattern");
        const char *rx = tok_json_str(pat, "Regex"), *lit = tok_json_str(pat, "String");
        if (!rx && !lit) vd_die("%s: Split pre_tokenizer without a pattern {\"Regex\": ...} or {\"String\": ...}", t->path);
        const char *b = tok_json_str(p, "behavior");
        static const char *names[] = {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"};
        int behavior = -1;
        for (int i = 0; i < 5; i++)
            if (b && !strcmp(b, names[i])) behavior = i;
        if (behavior < 0)
            vd_die("%s: Split behavior '%s' (expected Removed, Isolated, MergedWithPrevious, MergedWithNext or Contiguous)",
                   t->path, b ? b : "(none)");
        const char *s = rx ? rx : lit;
        tok_add_step(t, TOK_STEP_SPLIT, tok_regex_compile(t->path, s, strlen(s), !rx, "Split"), behavior,
                     tok_json_bool(p, "invert", 0));
    } else if (!strcmp(ty, "Digits")) {
        /* Rust's char::is_numeric is \p{N}; individual digits are isolated, else runs are kept together */
        tok_add_step(t, TOK_STEP_DIGITS, tok_regex_compile(t->path, "\\p{N}", 5, 0, "Digits"),
                     tok_json_bool(p, "individual_digits", 0) ? TOK_ISOLATED : TOK_CONTIGUOUS, 0);
    } else {
        vd_die("%s: pre_tokenizer %s is not supported (expected ByteLevel, Split, Digits or a Sequence of them: "
               "byte-level BPE)", t->path, ty);
    }
}

/* The ids a TemplateProcessing piece stands for. */
static void tok_json_template(vd_tokenizer *t, const cJSON *pp) {
    const cJSON *single = cJSON_GetObjectItemCaseSensitive(pp, "single");
    const cJSON *specials = cJSON_GetObjectItemCaseSensitive(pp, "special_tokens");
    if (!cJSON_IsArray(single)) vd_die("%s: TemplateProcessing without a \"single\" list", t->path);
    int seen_seq = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, single) {
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(it, "SpecialToken");
        if (cJSON_GetObjectItemCaseSensitive(it, "Sequence")) {
            if (seen_seq) vd_die("%s: TemplateProcessing single template uses the sequence twice", t->path);
            seen_seq = 1;
            continue;
        }
        const char *name = tok_json_str(st, "id");
        if (!name) vd_die("%s: TemplateProcessing item is neither a Sequence nor a SpecialToken", t->path);
        const cJSON *spec = cJSON_GetObjectItemCaseSensitive(specials, name);
        const cJSON *ids = cJSON_GetObjectItemCaseSensitive(spec, "ids");
        if (!cJSON_IsArray(ids)) vd_die("%s: TemplateProcessing special token '%s' has no \"ids\"", t->path, name);
        const cJSON *idv;
        cJSON_ArrayForEach(idv, ids) {
            if (!cJSON_IsNumber(idv) || idv->valuedouble < 0 || idv->valuedouble >= t->n_ids)
                vd_die("%s: TemplateProcessing special token '%s' has an id out of range", t->path, name);
            int32_t **arr = seen_seq ? &t->post_suffix : &t->post_prefix;
            int *n = seen_seq ? &t->n_post_suffix : &t->n_post_prefix;
            *arr = realloc(*arr, (size_t)(*n + 1) * sizeof(int32_t));
            if (!*arr) vd_die("tokenizer: out of memory");
            (*arr)[(*n)++] = (int32_t)idv->valuedouble;
        }
    }
}

static void tok_json_post(vd_tokenizer *t, const cJSON *pp) {
    if (!pp || cJSON_IsNull(pp)) return;
    const char *ty = tok_json_type(t->path, pp, "post_processor");
    if (!strcmp(ty, "Sequence")) {
        const cJSON *it;
        cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(pp, "processors")) tok_json_post(t, it);
    } else if (!strcmp(ty, "TemplateProcessing")) {
        tok_json_template(t, pp);
    } else if (!strcmp(ty, "ByteLevel")) {
        /* trims offsets only; adds no token */
    } else {
        vd_die("%s: post_processor %s is not supported (expected TemplateProcessing, ByteLevel or a Sequence of them)",
               t->path, ty);
    }
}

static void tok_json_decoder(const vd_tokenizer *t, const cJSON *d) {
    if (!d || cJSON_IsNull(d)) vd_die("%s: no decoder (expected ByteLevel: byte-level BPE)", t->path);
    const char *ty = tok_json_type(t->path, d, "decoder");
    if (!strcmp(ty, "Sequence")) {
        const cJSON *it;
        cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(d, "decoders")) tok_json_decoder(t, it);
    } else if (strcmp(ty, "ByteLevel") != 0) {
        vd_die("%s: decoder %s is not supported (expected ByteLevel: byte-level BPE)", t->path, ty);
    }
}

/* bos_token / eos_token of tokenizer_config.json: a string, or an AddedToken {"content": ...} */
static char *tok_config_token(const cJSON *cfg, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    const char *s = cJSON_IsString(v) ? v->valuestring : tok_json_str(v, "content");
    return s ? strdup(s) : NULL;
}

static char *tok_dirname(const char *path) {
    char *d = strdup(path);
    char *slash = strrchr(d, '/');
    if (slash) slash[slash == d ? 1 : 0] = 0;
    else strcpy(d, ".");
    return d;
}

static void tok_load_config(vd_tokenizer *t, const char *dir) {
    char path[VD_PATH_MAX];
    snprintf(path, sizeof(path), "%s/tokenizer_config.json", dir);
    if (vd_path_exists(path)) {
        char *s = tok_read_file(path, NULL, "a tokenizer_config.json");
        cJSON *cfg = cJSON_Parse(s);
        free(s);
        if (!cJSON_IsObject(cfg)) vd_die("%s: not a JSON object", path);
        t->bos_text = tok_config_token(cfg, "bos_token");
        t->eos_text = tok_config_token(cfg, "eos_token");
        const cJSON *ct = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template");
        if (cJSON_IsString(ct)) {
            t->chat_template = strdup(ct->valuestring);
        } else if (cJSON_IsArray(ct)) { /* [{"name": "default", "template": ...}, ...] */
            const cJSON *it;
            cJSON_ArrayForEach(it, ct) {
                const char *name = tok_json_str(it, "name"), *tpl = tok_json_str(it, "template");
                if (name && tpl && !strcmp(name, "default")) t->chat_template = strdup(tpl);
            }
        }
        cJSON_Delete(cfg);
    }
    /* transformers 5 writes the template to its own file */
    snprintf(path, sizeof(path), "%s/chat_template.jinja", dir);
    if (!t->chat_template && vd_path_exists(path)) t->chat_template = tok_read_file(path, NULL, "a chat template");
    if (t->bos_text) t->bos = tok_lookup_text(t, t->bos_text, strlen(t->bos_text));
    if (t->eos_text) t->eos = tok_lookup_text(t, t->eos_text, strlen(t->eos_text));
}

static vd_tokenizer *tok_load_json(const char *path) {
    char *s = tok_read_file(path, NULL, "a tokenizer.json");
    cJSON *root = cJSON_Parse(s);
    free(s);
    if (!cJSON_IsObject(root)) vd_die("%s: not a JSON object (expected a Hugging Face tokenizer.json)", path);
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!cJSON_IsObject(model)) vd_die("%s: no \"model\" object (expected a Hugging Face tokenizer.json)", path);
    const char *mt = tok_json_str(model, "type");
    if (!mt || strcmp(mt, "BPE") != 0)
        vd_die("%s: model type %s is not supported (expected BPE: byte-level BPE as GPT-2, Llama 3, Qwen2)", path,
               mt ? mt : "(none)");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (!cJSON_IsObject(vocab)) vd_die("%s: model.vocab is not an object {token: id}", path);
    if (!cJSON_IsArray(merges)) vd_die("%s: model.merges is not a list", path);
    if (tok_json_bool(model, "byte_fallback", 0))
        vd_die("%s: BPE byte_fallback is not supported (a sentencepiece-style vocabulary, not byte-level)", path);
    const char *csp = tok_json_str(model, "continuing_subword_prefix"), *eow = tok_json_str(model, "end_of_word_suffix");
    if ((csp && *csp) || (eow && *eow))
        vd_die("%s: BPE continuing_subword_prefix / end_of_word_suffix are not supported (byte-level BPE has none)", path);
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (cJSON_IsNumber(dropout) && dropout->valuedouble > 0)
        vd_die("%s: BPE dropout %g is not supported (encoding would not be deterministic)", path, dropout->valuedouble);
    const cJSON *norm = cJSON_GetObjectItemCaseSensitive(root, "normalizer");
    if (norm && !cJSON_IsNull(norm)) {
        const char *nt = tok_json_type(path, norm, "normalizer");
        vd_die("%s: normalizer %s is not supported (only tokenizers without a normalizer, as GPT-2, Llama 3, SmolLM2)",
               path, nt);
    }

    /* ids: the vocabulary's and the added tokens' */
    int32_t n_ids = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, vocab) {
        if (!cJSON_IsNumber(it) || it->valuedouble < 0 || it->valuedouble > 1e8)
            vd_die("%s: vocab entry '%.80s' has no valid id", path, it->string);
        if ((int32_t)it->valuedouble + 1 > n_ids) n_ids = (int32_t)it->valuedouble + 1;
    }
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    cJSON_ArrayForEach(it, added) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(it, "id");
        if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble > 1e8 || !tok_json_str(it, "content"))
            vd_die("%s: added token without a valid id and content", path);
        if ((int32_t)id->valuedouble + 1 > n_ids) n_ids = (int32_t)id->valuedouble + 1;
    }
    if (n_ids == 0) vd_die("%s: empty vocabulary", path);

    vd_tokenizer *t = tok_new(path, n_ids);
    tok_strmap_init(&t->vocab, (size_t)n_ids);
    tok_strmap_init(&t->vocab_bytes, (size_t)n_ids);
    cJSON_ArrayForEach(it, vocab) tok_add_vocab(t, it->string, strlen(it->string), (int32_t)it->valuedouble);
    tok_pairmap_init(&t->merges, (size_t)cJSON_GetArraySize(merges));
    int32_t rank = 0;
    cJSON_ArrayForEach(it, merges) {
        if (cJSON_IsString(it)) { /* "a b" */
            const char *sp = strchr(it->valuestring, ' ');
            if (!sp || strchr(sp + 1, ' ')) vd_die("%s: merge %d '%.80s' is not 'left right'", path, (int)rank, it->valuestring);
            tok_add_merge(t, it->valuestring, (size_t)(sp - it->valuestring), sp + 1, strlen(sp + 1), rank);
        } else if (cJSON_IsArray(it) && cJSON_GetArraySize(it) == 2 && cJSON_IsString(cJSON_GetArrayItem(it, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(it, 1))) { /* ["a", "b"] */
            const char *a = cJSON_GetArrayItem(it, 0)->valuestring, *b = cJSON_GetArrayItem(it, 1)->valuestring;
            tok_add_merge(t, a, strlen(a), b, strlen(b), rank);
        } else {
            vd_die("%s: merge %d is neither \"left right\" nor [\"left\", \"right\"]", path, (int)rank);
        }
        rank++;
    }
    t->ignore_merges = tok_json_bool(model, "ignore_merges", 0);
    const char *unk = tok_json_str(model, "unk_token");
    if (unk) {
        t->unk_id = tok_strmap_get(&t->vocab, unk, strlen(unk));
        if (t->unk_id < 0) vd_die("%s: unk_token '%.80s' is not in the vocabulary", path, unk);
        t->fuse_unk = tok_json_bool(model, "fuse_unk", 0);
    }
    cJSON_ArrayForEach(it, added) {
        const char *c = tok_json_str(it, "content");
        tok_add_added(t, c, strlen(c), (int32_t)cJSON_GetObjectItemCaseSensitive(it, "id")->valuedouble,
                      tok_json_bool(it, "special", 0), tok_json_bool(it, "lstrip", 0), tok_json_bool(it, "rstrip", 0),
                      tok_json_bool(it, "single_word", 0), tok_json_bool(it, "normalized", 0));
    }
    tok_index_added(t);

    const cJSON *pre = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
    if (!pre || cJSON_IsNull(pre)) vd_die("%s: no pre_tokenizer (expected ByteLevel: byte-level BPE)", path);
    int bytelevel = 0;
    if (!strcmp(tok_json_type(path, pre, "pre_tokenizer"), "Sequence")) {
        cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(pre, "pretokenizers")) tok_json_pretok(t, it, &bytelevel);
    } else {
        tok_json_pretok(t, pre, &bytelevel);
    }
    if (!bytelevel) vd_die("%s: the pre_tokenizer has no ByteLevel step (expected byte-level BPE)", path);
    tok_json_post(t, cJSON_GetObjectItemCaseSensitive(root, "post_processor"));
    tok_json_decoder(t, cJSON_GetObjectItemCaseSensitive(root, "decoder"));
    cJSON_Delete(root);

    char *dir = tok_dirname(path);
    tok_load_config(t, dir);
    free(dir);
    return t;
}

/* ---- GGUF ---- */

/* The i-th string of a string array (walks from the start: callers iterate in order). */
typedef struct { const uint8_t *p; } tok_gguf_iter;
static const char *tok_gguf_next_str(tok_gguf_iter *it, uint64_t *len) {
    memcpy(len, it->p, 8);
    const char *s = (const char *)it->p + 8;
    it->p += 8 + *len;
    return s;
}

static const vd_gguf_kv *tok_gguf_array(const vd_gguf *g, const char *key, uint32_t type, int required) {
    const vd_gguf_kv *kv = vd_gguf_find_kv(g, key);
    if (!kv) {
        if (required) vd_die("%s: no %s metadata (a GGUF without its tokenizer)", g->path, key);
        return NULL;
    }
    if (kv->type != VD_GGUF_ARRAY || (type != UINT32_MAX && kv->array_type != type))
        vd_die("%s: metadata %s is not an array of the expected type", g->path, key);
    return kv;
}

static int tok_gguf_bool(const vd_gguf *g, const char *key, int dflt) {
    const vd_gguf_kv *kv = vd_gguf_find_kv(g, key);
    if (!kv) return dflt;
    if (kv->type == VD_GGUF_BOOL) return kv->value[0] != 0;
    int64_t v;
    vd_gguf_get_int(g, key, &v);
    return v != 0;
}

static vd_tokenizer *tok_load_gguf(const char *path) {
    vd_gguf g;
    vd_gguf_open(&g, path);
    const char *s;
    uint64_t n;
    if (!vd_gguf_get_string(&g, "tokenizer.ggml.model", &s, &n))
        vd_die("%s: no tokenizer.ggml.model metadata (a GGUF without its tokenizer)", path);
    if (n != 4 || memcmp(s, "gpt2", 4) != 0)
        vd_die("%s: tokenizer.ggml.model '%.*s' is not supported (expected gpt2: byte-level BPE; 'llama' is "
               "sentencepiece)", path, (int)(n > 40 ? 40 : n), s);
    const vd_gguf_kv *tokens = tok_gguf_array(&g, "tokenizer.ggml.tokens", VD_GGUF_STRING, 1);
    const vd_gguf_kv *merges = tok_gguf_array(&g, "tokenizer.ggml.merges", VD_GGUF_STRING, 1);
    const vd_gguf_kv *types = tok_gguf_array(&g, "tokenizer.ggml.token_type", UINT32_MAX, 0);
    if (tokens->array_n == 0 || tokens->array_n > 100000000) vd_die("%s: tokenizer.ggml.tokens has %llu entries", path,
                                                                   (unsigned long long)tokens->array_n);
    if (types && types->array_n != tokens->array_n)
        vd_die("%s: tokenizer.ggml.token_type has %llu entries for %llu tokens", path,
               (unsigned long long)types->array_n, (unsigned long long)tokens->array_n);
    if (types && types->array_type != VD_GGUF_I32 && types->array_type != VD_GGUF_U32)
        vd_die("%s: tokenizer.ggml.token_type is not an int32 array", path);
    int32_t n_ids = (int32_t)tokens->array_n;
    vd_tokenizer *t = tok_new(path, n_ids);
    tok_strmap_init(&t->vocab, (size_t)n_ids);
    tok_strmap_init(&t->vocab_bytes, (size_t)n_ids);

    /* transformers (byte_level_tokenizer): a token not written in the alphabet is respelled from
     * its UTF-8 bytes */
    tok_gguf_iter it = {tokens->value};
    char *buf = NULL;
    size_t buf_cap = 0;
    for (int32_t i = 0; i < n_ids; i++) {
        const char *tk = tok_gguf_next_str(&it, &n);
        if (4 * n + 1 > buf_cap) { buf_cap = 8 * n + 64; buf = realloc(buf, buf_cap); if (!buf) vd_die("out of memory"); }
        int spelled;
        tok_unspell(tk, n, buf, &spelled);
        if (spelled) {
            tok_add_vocab(t, tk, n, i);
        } else {
            size_t m = 0;
            for (uint64_t k = 0; k < n; k++) m += tok_utf8_put(buf + m, tok_byte_cp[(unsigned char)tk[k]]);
            tok_add_vocab(t, buf, m, i);
        }
    }
    tok_pairmap_init(&t->merges, (size_t)merges->array_n);
    it.p = merges->value;
    for (uint64_t r = 0; r < merges->array_n; r++) {
        const char *m = tok_gguf_next_str(&it, &n);
        const char *sp = memchr(m, ' ', n);
        if (!sp || memchr(sp + 1, ' ', n - (size_t)(sp + 1 - m)))
            vd_die("%s: tokenizer.ggml.merges[%llu] '%.*s' is not 'left right'", path, (unsigned long long)r,
                   (int)(n > 80 ? 80 : n), m);
        tok_add_merge(t, m, (size_t)(sp - m), sp + 1, n - (size_t)(sp + 1 - m), (int32_t)r);
    }
    /* CONTROL (3) tokens are special added tokens, USER_DEFINED (4) plain added tokens; a
     * CONTROL token not written in the alphabet is a llama.cpp mislabel transformers skips */
    if (types) {
        it.p = tokens->value;
        for (int32_t i = 0; i < n_ids; i++) {
            const char *tk = tok_gguf_next_str(&it, &n);
            int32_t ty;
            memcpy(&ty, types->value + 4 * (size_t)i, 4);
            if (ty != 3 && ty != 4) continue;
            if (4 * n + 1 > buf_cap) { buf_cap = 8 * n + 64; buf = realloc(buf, buf_cap); if (!buf) vd_die("out of memory"); }
            int spelled;
            tok_unspell(tk, n, buf, &spelled);
            if (ty == 3 && !spelled) continue;
            if (n == 0) continue;
            tok_add_added(t, tk, n, i, ty == 3, 0, 0, 0, 0);
        }
    }
    free(buf);
    tok_index_added(t);

    const char *pre = NULL;
    uint64_t pre_n = 0;
    const char *split = NULL;
    if (vd_gguf_get_string(&g, "tokenizer.ggml.pre", &pre, &pre_n))
        for (size_t k = 0; k < sizeof(TOK_GGUF_SPLITS) / sizeof(TOK_GGUF_SPLITS[0]); k++)
            if (strlen(TOK_GGUF_SPLITS[k].pre) == pre_n && !memcmp(TOK_GGUF_SPLITS[k].pre, pre, pre_n))
                split = *TOK_GGUF_SPLITS[k].regex;
    t->add_prefix_space = 0;
    if (split) tok_add_step(t, TOK_STEP_SPLIT, tok_regex_compile(path, split, strlen(split), 0, "Split"), TOK_ISOLATED, 0);
    else t->bytelevel_re = tok_regex_compile(path, TOK_GPT2_REGEX, strlen(TOK_GPT2_REGEX), 0, "ByteLevel");

    int64_t v;
    if (vd_gguf_get_int(&g, "tokenizer.ggml.bos_token_id", &v) && v >= 0 && v < n_ids) t->bos = (int32_t)v;
    if (vd_gguf_get_int(&g, "tokenizer.ggml.eos_token_id", &v) && v >= 0 && v < n_ids) t->eos = (int32_t)v;
    if (t->bos >= 0 && tok_gguf_bool(&g, "tokenizer.ggml.add_bos_token", 0)) {
        t->post_prefix = mallocCheck(sizeof(int32_t));
        t->post_prefix[t->n_post_prefix++] = t->bos;
    }
    if (t->eos >= 0 && tok_gguf_bool(&g, "tokenizer.ggml.add_eos_token", 0)) {
        t->post_suffix = mallocCheck(sizeof(int32_t));
        t->post_suffix[t->n_post_suffix++] = t->eos;
    }
    /* bos / eos text: the token as transformers names it (its vocabulary spelling) */
    for (int k = 0; k < 2; k++) {
        int32_t id = k ? t->eos : t->bos;
        if (id < 0) continue;
        it.p = tokens->value;
        for (int32_t i = 0; i <= id; i++) s = tok_gguf_next_str(&it, &n);
        char *txt = mallocCheck(n + 1);
        memcpy(txt, s, n);
        txt[n] = 0;
        if (k) t->eos_text = txt; else t->bos_text = txt;
    }
    if (vd_gguf_get_string(&g, "tokenizer.chat_template", &s, &n)) {
        t->chat_template = mallocCheck(n + 1);
        memcpy(t->chat_template, s, n);
        t->chat_template[n] = 0;
    }
    vd_gguf_close(&g);
    return t;
}

vd_tokenizer *vd_tokenizer_load(const char *path) {
    struct stat st;
    if (!path || !*path) vd_die("tokenizer: no path given (expected a directory with tokenizer.json, a tokenizer.json or a .gguf)");
    if (stat(path, &st) != 0)
        vd_die("%s: cannot open (%s); expected a directory with tokenizer.json, a tokenizer.json or a .gguf file", path,
               strerror(errno));
    if (S_ISDIR(st.st_mode)) {
        char p[VD_PATH_MAX];
        if ((size_t)snprintf(p, sizeof(p), "%s/tokenizer.json", path) >= sizeof(p)) vd_die("%s: path too long", path);
        if (!vd_path_exists(p)) vd_die("%s: no tokenizer.json in this directory (expected a Hugging Face tokenizer)", path);
        return tok_load_json(p);
    }
    vd_require_regular_file(path, "a tokenizer.json or a .gguf file");
    if (vd_gguf_has_suffix(path) || vd_gguf_has_magic(path)) return tok_load_gguf(path);
    return tok_load_json(path);
}

void vd_tokenizer_free(vd_tokenizer *t) {
    if (!t) return;
    free(t->bytes_off); free(t->bytes_len); free(t->bytes_arena); free(t->special);
    tok_strmap_free(&t->vocab); tok_strmap_free(&t->vocab_bytes); tok_pairmap_free(&t->merges);
    for (int32_t i = 0; i < t->n_added; i++) free(t->added[i].content);
    free(t->added);
    tok_strmap_free(&t->added_by_text);
    for (int p = 0; p < 2; p++) { free(t->first_start[p]); free(t->first_list[p]); }
    for (int i = 0; i < t->n_steps; i++) pcre2_code_free(t->steps[i].re);
    free(t->steps);
    pcre2_code_free(t->bytelevel_re); pcre2_code_free(t->ws_re); pcre2_code_free(t->word_re);
    free(t->post_prefix); free(t->post_suffix);
    free(t->bos_text); free(t->eos_text); free(t->chat_template);
    tok_strmap_free(&t->cache);
    free(t->cache_vals);
    free(t);
}

/* ----------------------------------------------------------------------------------------- */
/* encoding */

static void tok_push(vd_tokens *out, int32_t id, size_t off, int want_off) {
    if (out->n == out->cap) {
        size_t cap = out->cap ? 2 * out->cap : 256;
        out->ids = realloc(out->ids, cap * sizeof(int32_t));
        if (!out->ids) vd_die("tokenizer: out of memory");
        if (want_off || out->offsets) {
            out->offsets = realloc(out->offsets, cap * sizeof(uint32_t));
            if (!out->offsets) vd_die("tokenizer: out of memory");
        }
        out->cap = cap;
    }
    if (want_off && !out->offsets) { /* first call with offsets on a list that had none */
        out->offsets = callocCheck(out->cap, sizeof(uint32_t));
    }
    out->ids[out->n] = id;
    if (out->offsets) out->offsets[out->n] = want_off ? (uint32_t)off : 0;
    out->n++;
}

/* one pass of the encode: matches, segments, pieces (byte ranges of the text) */
typedef struct { size_t start, end; int32_t id; } tok_span; /* id -1: text still to tokenize */
typedef struct { tok_span *v; size_t n, cap; } tok_spans;

static void tok_spans_push(tok_spans *s, size_t start, size_t end, int32_t id) {
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 64;
        s->v = realloc(s->v, s->cap * sizeof(tok_span));
        if (!s->v) vd_die("tokenizer: out of memory");
    }
    s->v[s->n++] = (tok_span){start, end, id};
}

typedef struct {
    const vd_tokenizer *t;
    pcre2_match_data *md;
    tok_spans a, b;       /* scratch lists of the pre-tokenizer steps */
    /* BPE scratch */
    int32_t *sym_id, *sym_prev, *sym_next;
    uint32_t *sym_start, *sym_len;
    int64_t *heap; size_t heap_n;
    size_t sym_cap;
    char *buf; size_t buf_cap;
} tok_ctx;

/* Is the character at s[i..) (or ending at s[..i)) a match of the one-character regex re? */
static int tok_char_at(tok_ctx *c, const pcre2_code *re, const char *s, size_t n, size_t i) {
    return pcre2_match(re, (PCRE2_SPTR)s, n, i, PCRE2_ANCHORED | PCRE2_NO_UTF_CHECK, c->md, NULL) > 0;
}
static size_t tok_prev_char(const char *s, size_t i) {
    if (i == 0) return 0;
    size_t j = i - 1;
    while (j > 0 && ((unsigned char)s[j] & 0xC0) == 0x80 && i - j < 4) j--;
    return j;
}

/* Splits the spans with id -1 of `in` on the added tokens of one pass (tokenizers'
 * AddedVocabulary::find_matches: leftmost-longest, then single_word / lstrip / rstrip). */
static void tok_split_added(tok_ctx *c, const char *text, int pass, const tok_spans *in, tok_spans *out) {
    const vd_tokenizer *t = c->t;
    const int32_t *start = t->first_start[pass], *list = t->first_list[pass];
    out->n = 0;
    for (size_t k = 0; k < in->n; k++) {
        tok_span sp = in->v[k];
        if (sp.id >= 0 || start[256] == 0) { tok_spans_push(out, sp.start, sp.end, sp.id); continue; }
        const char *s = text + sp.start;
        size_t n = sp.end - sp.start, done = 0, i = 0;
        while (i < n) {
            unsigned char b = (unsigned char)s[i];
            int32_t best = -1;
            size_t best_len = 0;
            for (int32_t q = start[b]; q < start[b + 1]; q++) {
                const tok_added *a = &t->added[list[q]];
                if (a->len > best_len && a->len <= n - i && !memcmp(s + i, a->content, a->len)) { best = list[q]; best_len = a->len; }
            }
            if (best < 0) { i++; continue; }
            const tok_added *a = &t->added[best];
            size_t ms = i, me = i + best_len;
            i = me; /* the search goes on after this match even when it is dropped below */
            if (a->single_word) {
                int word_before = ms > 0 && tok_char_at(c, t->word_re, s, n, tok_prev_char(s, ms));
                int word_after = me < n && tok_char_at(c, t->word_re, s, n, me);
                if (word_before || word_after) continue;
            }
            if (a->lstrip) {
                size_t j = ms;
                while (j > 0) {
                    size_t p = tok_prev_char(s, j);
                    if (!tok_char_at(c, t->ws_re, s, n, p)) break;
                    j = p;
                }
                ms = j > done ? j : done;
            }
            if (a->rstrip) {
                while (me < n && tok_char_at(c, t->ws_re, s, n, me)) {
                    size_t q = me;
                    tok_utf8_next(s, n, &q);
                    me = q;
                }
                i = me;
            }
            if (done < ms) tok_spans_push(out, sp.start + done, sp.start + ms, -1);
            tok_spans_push(out, sp.start + ms, sp.start + me, a->id);
            done = me;
        }
        if (done < n) tok_spans_push(out, sp.start + done, sp.end, -1);
    }
}

/* Matches of re in s[0..n) as (start, end, is_match) covering s, as tokenizers' find_matches. */
static void tok_find_matches(tok_ctx *c, const pcre2_code *re, const char *s, size_t n, size_t base, int invert,
                             tok_spans *out) {
    size_t prev = 0, at = 0;
    while (at < n) {
        int rc = pcre2_match(re, (PCRE2_SPTR)s, n, at, PCRE2_NO_UTF_CHECK, c->md, NULL);
        if (rc <= 0) break;
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(c->md);
        size_t ms = ov[0], me = ov[1];
        if (me == ms) { /* an empty match splits nothing: step past one character */
            size_t q = ms;
            if (q >= n) break;
            tok_utf8_next(s, n, &q);
            at = q;
            continue;
        }
        if (prev != ms) tok_spans_push(out, base + prev, base + ms, invert ? 1 : 0);
        tok_spans_push(out, base + ms, base + me, invert ? 0 : 1);
        prev = at = me;
    }
    if (prev != n) tok_spans_push(out, base + prev, base + n, invert ? 1 : 0);
}

/* One Split / Digits step over the pieces in c->a (ids unused: 0), into c->b; then swaps. */
static void tok_apply_step(tok_ctx *c, const char *text, const tok_step *st) {
    tok_spans m = {0};
    c->b.n = 0;
    for (size_t k = 0; k < c->a.n; k++) {
        tok_span sp = c->a.v[k];
        m.n = 0;
        tok_find_matches(c, st->re, text + sp.start, sp.end - sp.start, sp.start, st->invert, &m);
        size_t first = c->b.n;
        switch (st->behavior) {
        case TOK_REMOVED:
            for (size_t i = 0; i < m.n; i++) if (!m.v[i].id) tok_spans_push(&c->b, m.v[i].start, m.v[i].end, 0);
            break;
        case TOK_ISOLATED:
            for (size_t i = 0; i < m.n; i++) tok_spans_push(&c->b, m.v[i].start, m.v[i].end, 0);
            break;
        case TOK_CONTIGUOUS: {
            int prev_match = 0;
            for (size_t i = 0; i < m.n; i++) {
                if (m.v[i].id && prev_match) c->b.v[c->b.n - 1].end = m.v[i].end;
                else tok_spans_push(&c->b, m.v[i].start, m.v[i].end, 0);
                prev_match = m.v[i].id;
            }
            break;
        }
        case TOK_MERGED_PREV: {
            int prev_match = 0;
            for (size_t i = 0; i < m.n; i++) {
                if (m.v[i].id && !prev_match && c->b.n > first) c->b.v[c->b.n - 1].end = m.v[i].end;
                else tok_spans_push(&c->b, m.v[i].start, m.v[i].end, 0);
                prev_match = m.v[i].id;
            }
            break;
        }
        case TOK_MERGED_NEXT: { /* tokenizers folds from the right */
            int prev_match = 0;
            size_t last = c->b.n;
            for (size_t i = m.n; i-- > 0;) {
                if (m.v[i].id && !prev_match && c->b.n > first) c->b.v[c->b.n - 1].start = m.v[i].start;
                else tok_spans_push(&c->b, m.v[i].start, m.v[i].end, 0);
                prev_match = m.v[i].id;
            }
            for (size_t i = last, j = c->b.n; i + 1 < j; i++, j--) {
                tok_span tmp = c->b.v[i]; c->b.v[i] = c->b.v[j - 1]; c->b.v[j - 1] = tmp;
            }
            break;
        }
        }
    }
    free(m.v);
    tok_spans tmp = c->a; c->a = c->b; c->b = tmp;
}

/* ---- BPE of one piece ---- */

static void tok_ctx_reserve(tok_ctx *c, size_t n) {
    if (n <= c->sym_cap) return;
    size_t cap = 2 * n;
    c->sym_id = realloc(c->sym_id, cap * sizeof(int32_t));
    c->sym_prev = realloc(c->sym_prev, cap * sizeof(int32_t));
    c->sym_next = realloc(c->sym_next, cap * sizeof(int32_t));
    c->sym_start = realloc(c->sym_start, cap * sizeof(uint32_t));
    c->sym_len = realloc(c->sym_len, cap * sizeof(uint32_t));
    c->heap = realloc(c->heap, 2 * cap * sizeof(int64_t));
    if (!c->sym_id || !c->sym_prev || !c->sym_next || !c->sym_start || !c->sym_len || !c->heap)
        vd_die("tokenizer: out of memory");
    c->sym_cap = cap;
}

/* heap of (rank << 32 | pos): the smallest rank first, the leftmost among equal ranks */
static void tok_heap_push(tok_ctx *c, int32_t rank, int32_t pos) {
    int64_t v = ((int64_t)rank << 32) | (uint32_t)pos;
    size_t i = c->heap_n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (c->heap[p] <= v) break;
        c->heap[i] = c->heap[p];
        i = p;
    }
    c->heap[i] = v;
}
static int64_t tok_heap_pop(tok_ctx *c) {
    int64_t top = c->heap[0], v = c->heap[--c->heap_n];
    size_t i = 0, n = c->heap_n;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        int64_t mv = v;
        if (l < n && c->heap[l] < mv) { m = l; mv = c->heap[l]; }
        if (r < n && c->heap[r] < mv) { m = r; }
        if (m == i) break;
        c->heap[i] = c->heap[m];
        i = m;
    }
    if (n) c->heap[i] = v;
    return top;
}

static void tok_push_pair(tok_ctx *c, int32_t pos) {
    int32_t nx = c->sym_next[pos];
    if (nx < 0) return;
    int found;
    size_t s = tok_pairmap_find(&c->t->merges, c->sym_id[pos], c->sym_id[nx], &found);
    if (found) tok_heap_push(c, c->t->merges.rank[s], pos);
}

/* BPE of p[0..n): appends (id, start in p) pairs to vals (count first). As tokenizers' Word::merge_all. */
static void tok_bpe(tok_ctx *c, const char *p, size_t n, int32_t **vals, size_t *vn, size_t *vcap) {
    const vd_tokenizer *t = c->t;
    tok_ctx_reserve(c, n + 1);
    int32_t m = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = t->byte_id[(unsigned char)p[i]];
        if (id < 0) {
            if (t->unk_id < 0) continue; /* no unk token: the byte is dropped, as tokenizers does */
            if (t->fuse_unk && m > 0 && c->sym_id[m - 1] == t->unk_id) { c->sym_len[m - 1]++; continue; }
            id = t->unk_id;
        }
        c->sym_id[m] = id; c->sym_start[m] = (uint32_t)i; c->sym_len[m] = 1;
        c->sym_prev[m] = m - 1; c->sym_next[m] = m + 1;
        m++;
    }
    if (m > 0) c->sym_next[m - 1] = -1;
    c->heap_n = 0;
    for (int32_t i = 0; i + 1 < m; i++) tok_push_pair(c, i);
    while (c->heap_n) {
        int64_t top = tok_heap_pop(c);
        int32_t pos = (int32_t)(top & 0xFFFFFFFF), rank = (int32_t)(top >> 32);
        if (c->sym_len[pos] == 0) continue;            /* merged into its left neighbour already */
        int32_t nx = c->sym_next[pos];
        if (nx < 0) continue;
        int found;
        size_t s = tok_pairmap_find(&t->merges, c->sym_id[pos], c->sym_id[nx], &found);
        if (!found || t->merges.rank[s] != rank) continue; /* a stale entry: the pair changed */
        c->sym_id[pos] = t->merges.merged[s];
        c->sym_len[pos] += c->sym_len[nx];
        c->sym_len[nx] = 0;
        c->sym_next[pos] = c->sym_next[nx];
        if (c->sym_next[nx] >= 0) c->sym_prev[c->sym_next[nx]] = pos;
        if (c->sym_prev[pos] >= 0) tok_push_pair(c, c->sym_prev[pos]);
        tok_push_pair(c, pos);
    }
    int32_t count = 0;
    for (int32_t i = 0; i < m; i++) count += c->sym_len[i] > 0;
    size_t need = *vn + 1 + 2 * (size_t)count;
    if (need > *vcap) {
        *vcap = 2 * need + 64;
        *vals = realloc(*vals, *vcap * sizeof(int32_t));
        if (!*vals) vd_die("tokenizer: out of memory");
    }
    (*vals)[(*vn)++] = count;
    for (int32_t i = 0; i < m; i++) {
        if (!c->sym_len[i]) continue;
        (*vals)[(*vn)++] = c->sym_id[i];
        (*vals)[(*vn)++] = (int32_t)c->sym_start[i];
    }
}

/* One piece p[0..n) of the text (p[0] is at text offset base, or p[0] is the prefix space when
 * prefixed): ids appended to out. */
static void tok_encode_piece(tok_ctx *c, const char *p, size_t n, size_t base, int prefixed, int want_off,
                             vd_tokens *out) {
    vd_tokenizer *t = (vd_tokenizer *)c->t; /* the cache is the one mutable part */
    if (n == 0) return;
    if (t->ignore_merges) {
        int32_t id = tok_strmap_get(&t->vocab_bytes, p, n);
        if (id >= 0) { tok_push(out, id, base, want_off); return; }
    }
    const int32_t *v;
    int32_t local_buf[2 * 64 + 1];
    int32_t *local = NULL;
    size_t vn = 0, vcap = 0;
    if (n <= TOK_CACHE_MAX_PIECE) {
        int32_t at = tok_strmap_get(&t->cache, p, n);
        if (at < 0) {
            if (t->cache.n >= TOK_CACHE_MAX_WORDS) { /* full: start over (cheap, and bounds memory) */
                memset(t->cache.hash, 0, t->cache.cap * sizeof(uint64_t));
                t->cache.n = 0;
                t->cache.arena_n = 0;
                t->cache_vals_n = 0;
            }
            at = (int32_t)t->cache_vals_n;
            tok_bpe(c, p, n, &t->cache_vals, &t->cache_vals_n, &t->cache_vals_cap);
            tok_strmap_set(&t->cache, p, n, at);
        }
        v = t->cache_vals + at;
    } else {
        tok_bpe(c, p, n, &local, &vn, &vcap);
        v = local;
    }
    (void)local_buf;
    int32_t count = v[0];
    for (int32_t k = 0; k < count; k++) {
        size_t st = (size_t)v[2 + 2 * k];
        size_t off = prefixed ? (st == 0 ? base : base + st - 1) : base + st;
        tok_push(out, v[1 + 2 * k], off, want_off);
    }
    free(local);
}

/* A segment between added tokens: the pre-tokenizer steps, then ByteLevel, then BPE. */
static void tok_encode_segment(tok_ctx *c, const char *text, size_t start, size_t end, int want_off, vd_tokens *out) {
    const vd_tokenizer *t = c->t;
    c->a.n = 0;
    tok_spans_push(&c->a, start, end, 0);
    for (int s = 0; s < t->n_steps; s++) tok_apply_step(c, text, &t->steps[s]);
    tok_spans sub = {0};
    for (size_t k = 0; k < c->a.n; k++) {
        size_t ps = c->a.v[k].start, pn = c->a.v[k].end - ps;
        const char *p = text + ps;
        int prefixed = 0;
        if (t->add_prefix_space && p[0] != ' ') { /* ByteLevel prepends a space to every piece */
            if (pn + 1 > c->buf_cap) { c->buf_cap = 2 * pn + 64; c->buf = realloc(c->buf, c->buf_cap); if (!c->buf) vd_die("out of memory"); }
            c->buf[0] = ' ';
            memcpy(c->buf + 1, p, pn);
            p = c->buf;
            pn++;
            prefixed = 1;
        }
        if (!t->bytelevel_re) {
            tok_encode_piece(c, p, pn, ps, prefixed, want_off, out);
            continue;
        }
        sub.n = 0;
        tok_find_matches(c, t->bytelevel_re, p, pn, 0, 0, &sub);
        for (size_t q = 0; q < sub.n; q++) {
            size_t qs = sub.v[q].start, qn = sub.v[q].end - qs;
            /* the piece's offsets: byte qs of p is text byte ps + qs (- 1 after a prefix space) */
            if (prefixed && qs == 0) tok_encode_piece(c, p, qn, ps, 1, want_off, out);
            else tok_encode_piece(c, p + qs, qn, ps + qs - (size_t)prefixed, 0, want_off, out);
        }
    }
    free(sub.v);
}

void vd_tokenizer_encode(const vd_tokenizer *t, const char *text, size_t len, int flags, vd_tokens *out) {
    int want_off = (flags & VD_TOK_WITH_OFFSETS) != 0;
    if (len > UINT32_MAX) vd_die("tokenizer: text of %zu bytes is too long to encode at once (at most 4 GB)", len);
    tok_ctx c = {.t = t};
    c.md = pcre2_match_data_create(4, NULL);
    if (!c.md) vd_die("tokenizer: out of memory");
    if (flags & VD_TOK_ADD_SPECIAL)
        for (int i = 0; i < t->n_post_prefix; i++) tok_push(out, t->post_prefix[i], 0, want_off);
    tok_spans s0 = {0}, s1 = {0}, s2 = {0};
    tok_spans_push(&s0, 0, len, -1);
    tok_split_added(&c, text, 0, &s0, &s1);
    tok_split_added(&c, text, 1, &s1, &s2);
    for (size_t k = 0; k < s2.n; k++) {
        if (s2.v[k].id >= 0) tok_push(out, s2.v[k].id, s2.v[k].start, want_off);
        else if (s2.v[k].end > s2.v[k].start) tok_encode_segment(&c, text, s2.v[k].start, s2.v[k].end, want_off, out);
    }
    if (flags & VD_TOK_ADD_SPECIAL)
        for (int i = 0; i < t->n_post_suffix; i++) tok_push(out, t->post_suffix[i], len, want_off);
    free(s0.v); free(s1.v); free(s2.v);
    free(c.a.v); free(c.b.v);
    free(c.sym_id); free(c.sym_prev); free(c.sym_next); free(c.sym_start); free(c.sym_len); free(c.heap); free(c.buf);
    pcre2_match_data_free(c.md);
}

void vd_tokens_free(vd_tokens *v) {
    free(v->ids);
    free(v->offsets);
    memset(v, 0, sizeof(*v));
}

/* ----------------------------------------------------------------------------------------- */
/* decoding and lookups */

const char *vd_tokenizer_token_bytes(const vd_tokenizer *t, int32_t id, size_t *len) {
    if (id < 0 || id >= t->n_ids || t->bytes_off[id] < 0) { if (len) *len = 0; return NULL; }
    if (len) *len = t->bytes_len[id];
    return t->bytes_arena + t->bytes_off[id];
}

char *vd_tokenizer_decode(const vd_tokenizer *t, const int32_t *ids, size_t n, int skip_special, size_t *len_out) {
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        size_t l;
        if (skip_special && vd_tokenizer_is_special(t, ids[i])) continue;
        if (vd_tokenizer_token_bytes(t, ids[i], &l)) total += l;
    }
    char *s = mallocCheck(total + 1), *w = s;
    for (size_t i = 0; i < n; i++) {
        size_t l;
        if (skip_special && vd_tokenizer_is_special(t, ids[i])) continue;
        const char *b = vd_tokenizer_token_bytes(t, ids[i], &l);
        if (b) { memcpy(w, b, l); w += l; }
    }
    *w = 0;
    if (len_out) *len_out = total;
    return s;
}

int32_t vd_tokenizer_vocab_size(const vd_tokenizer *t) { return t->n_ids; }

int32_t vd_tokenizer_token_id(const vd_tokenizer *t, const char *token) {
    return token ? tok_lookup_text(t, token, strlen(token)) : -1;
}

int32_t vd_tokenizer_bos(const vd_tokenizer *t) { return t->bos; }
int32_t vd_tokenizer_eos(const vd_tokenizer *t) { return t->eos; }
int vd_tokenizer_is_special(const vd_tokenizer *t, int32_t id) { return id >= 0 && id < t->n_ids && t->special[id]; }
const char *vd_tokenizer_chat_template(const vd_tokenizer *t) { return t->chat_template; }
const char *vd_tokenizer_bos_text(const vd_tokenizer *t) { return t->bos >= 0 && t->bos_text ? t->bos_text : ""; }
const char *vd_tokenizer_eos_text(const vd_tokenizer *t) { return t->eos >= 0 && t->eos_text ? t->eos_text : ""; }
