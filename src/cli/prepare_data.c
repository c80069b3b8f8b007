/* prepare_data.c: `vera-dist prepare-data`, text or instruction data -> token shards.
 *
 * Three modes (docs/data-prep.md):
 *   - no --tokenizer: byte-level tokens (token id = byte value, vocab 256), v1 (llm.c) shards, so a
 *     smoke run or a tutorial needs no tokenizer and no Python. The input is streamed one shard
 *     at a time, so its size is bounded by disk, not memory.
 *   - --tokenizer, text files: each file is one document, tokenized with the model's tokenizer
 *     (special tokens written in the text are recognised, nothing is added), documents joined
 *     with the tokenizer's EOS between them; v2 shards without flags (every target takes a loss).
 *   - --tokenizer, .jsonl files (or --format chat): one instruction example per line, rendered
 *     with the tokenizer's chat template (src/text/chat.c) and tokenized as
 *     apply_chat_template(messages, tokenize=True) does; v2 shards of examples whose tokens take
 *     a loss only inside the assistant turns (content and end-of-turn token).
 * The tokenizer modes read everything and check every line before the first shard is written,
 * so a bad line leaves the output directory as it was. */
#define _POSIX_C_SOURCE 200809L
#include "vera/cli.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vera/chat.h"
#include "vera/common.h"
#include "vera/data.h"
#include "vera/tokenizer.h"

#define DEFAULT_VAL_FRACTION 0.1
#define MAX_VAL_FRACTION 0.9
#define DEFAULT_SHARD_TOKENS 100000000ULL
/* names carry a 6-digit index; a 7th digit would sort train_1000000 before train_100001 */
#define MAX_SHARDS 1000000ULL
#define MAX_INPUTS 4096

typedef enum { FORMAT_AUTO, FORMAT_TEXT, FORMAT_CHAT } in_format;

typedef struct {
    const char *in[MAX_INPUTS];
    int n_in;
    const char *out;
    const char *tokenizer;
    const char *chat_template; /* a name (smollm2, llama3, ...) or a file holding the template */
    in_format format;
    double val_fraction;
    uint64_t shard_tokens;
    int overwrite;
} prep_opts;

static void print_usage(FILE *f) {
    fprintf(f,
            "usage: vera-dist prepare-data --in FILE [--in FILE ...] --out DIR [--tokenizer PATH] [--format F]\n"
            "                              [--chat_template T] [--val_fraction F] [--shard_tokens N] [--overwrite]\n"
            "\n"
            "Turns text or instruction data into token shards: DIR/train_000000.bin, ... and DIR/val_000000.bin, ...;\n"
            "point train_data at 'DIR/train_*.bin' and val_data at 'DIR/val_*.bin'.\n"
            "Without --tokenizer: one file, byte-level tokens (token = byte, vocab 256), the last F of the bytes to val.\n"
            "With --tokenizer: text files are documents (EOS between them; the last F of the tokens to val);\n"
            ".jsonl files are instruction examples, one per line: {\"messages\": [{\"role\", \"content\"}, ...]},\n"
            "{\"prompt\", \"completion\"} or {\"instruction\", \"input\", \"output\"}, rendered with the chat template,\n"
            "loss on the assistant turns only (the last F of the examples to val).\n"
            "\n"
            "  --in FILE           input file (repeatable; regular, non-empty)\n"
            "  --out DIR           output directory, created if missing\n"
            "  --tokenizer PATH    the model's tokenizer: a directory with tokenizer.json, a tokenizer.json, or a .gguf\n"
            "  --format F          auto (default: .jsonl = chat, else text), text or chat\n"
            "  --chat_template T   instead of the tokenizer's template: smollm2, qwen2, chatml, llama3, or a file holding\n"
            "                      a template's text (recognised like the tokenizer's)\n"
            "  --val_fraction F    fraction for validation, in [0, %.1f] (default %.1f; 0 = no val shard)\n"
            "  --shard_tokens N    at most N tokens per shard, in [1, %d] (default %llu; an example is never split)\n"
            "  --overwrite         replace shards already in DIR (stale ones beyond the new count are removed)\n"
            "  --help              this text\n",
            MAX_VAL_FRACTION, DEFAULT_VAL_FRACTION, INT32_MAX, (unsigned long long)DEFAULT_SHARD_TOKENS);
}

static double parse_fraction(const char *s) {
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end != 0 || errno != 0 || !isfinite(v) || v < 0.0 || v > MAX_VAL_FRACTION)
        vd_die("prepare-data: --val_fraction: '%s' is not a number in [0, %.1f]", s, MAX_VAL_FRACTION);
    return v;
}

static uint64_t parse_shard_tokens(const char *s) {
    char *end = NULL;
    errno = 0;
    /* strtoull accepts "-1" (as a huge value), so demand a leading digit */
    unsigned long long v = (s[0] >= '0' && s[0] <= '9') ? strtoull(s, &end, 10) : 0;
    if (end == NULL || end == s || *end != 0 || errno != 0 || v < 1 || v > (unsigned long long)INT32_MAX)
        vd_die("prepare-data: --shard_tokens: '%s' is not an integer in [1, %d] (the shard header count is int32)",
               s, INT32_MAX);
    return (uint64_t)v;
}

/* Accepts --key value and --key=value, like the trainer's options. Returns 0 after --help. */
static int parse_args(prep_opts *o, int argc, char **argv) {
    memset(o, 0, sizeof(*o));
    o->val_fraction = DEFAULT_VAL_FRACTION;
    o->shard_tokens = DEFAULT_SHARD_TOKENS;
    const char *format = NULL;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            print_usage(stdout);
            return 0;
        }
        if (strncmp(arg, "--", 2) != 0)
            vd_die("prepare-data: unexpected argument '%s' (options start with --; see --help)", arg);
        const char *name = arg + 2;
        const char *eq = strchr(name, '=');
        size_t name_len = eq ? (size_t)(eq - name) : strlen(name);
        const char *value = eq ? eq + 1 : NULL;
#define IS(key) (name_len == strlen(key) && strncmp(name, key, name_len) == 0)
        if (IS("overwrite")) {
            if (value) vd_die("prepare-data: --overwrite takes no value (got '%s')", arg);
            o->overwrite = 1;
            continue;
        }
        if (!IS("in") && !IS("out") && !IS("val_fraction") && !IS("shard_tokens") && !IS("tokenizer") &&
            !IS("format") && !IS("chat_template"))
            vd_die("prepare-data: unknown option '%s' (see --help)", arg);
        if (!value) {
            if (i + 1 >= argc) vd_die("prepare-data: --%.*s needs a value", (int)name_len, name);
            value = argv[++i];
        }
        if (IS("in")) {
            if (o->n_in == MAX_INPUTS) vd_die("prepare-data: --in: more than %d files (concatenate some)", MAX_INPUTS);
            if (!value[0]) vd_die("prepare-data: --in needs a file name (got '')");
            o->in[o->n_in++] = value;
        } else if (IS("out")) o->out = value;
        else if (IS("tokenizer")) o->tokenizer = value;
        else if (IS("format")) format = value;
        else if (IS("chat_template")) o->chat_template = value;
        else if (IS("val_fraction")) o->val_fraction = parse_fraction(value);
        else o->shard_tokens = parse_shard_tokens(value);
#undef IS
    }
    if (o->n_in == 0) vd_die("prepare-data: --in is required (the file(s) to tokenize; see --help)");
    if (!o->out || !o->out[0]) vd_die("prepare-data: --out is required (the directory for the shards; see --help)");
    if (format) {
        if (strcmp(format, "auto") == 0) o->format = FORMAT_AUTO;
        else if (strcmp(format, "text") == 0) o->format = FORMAT_TEXT;
        else if (strcmp(format, "chat") == 0) o->format = FORMAT_CHAT;
        else vd_die("prepare-data: --format: '%s' (expected auto, text or chat)", format);
    }
    if (o->tokenizer && !o->tokenizer[0]) vd_die("prepare-data: --tokenizer needs a path (got '')");
    if (!o->tokenizer) {
        if (format || o->chat_template)
            vd_die("prepare-data: --%s needs --tokenizer (without one, prepare-data writes byte tokens)",
                   format ? "format" : "chat_template");
        if (o->n_in > 1)
            vd_die("prepare-data: --in given %d times; byte-level mode (no --tokenizer) takes one file", o->n_in);
    }
    return 1;
}

/* "train_*.bin" / "val_*.bin", the names the trainer's globs would pick up. */
static int is_shard_name(const char *name, const char *prefix) {
    size_t n = strlen(name), p = strlen(prefix);
    return n >= p + 4 && strncmp(name, prefix, p) == 0 && strcmp(name + n - 4, ".bin") == 0;
}

/* One of the names this run wrote: prefix + 6 digits < count + ".bin". */
static int is_ours(const char *name, const char *prefix, uint64_t count) {
    size_t p = strlen(prefix);
    if (strlen(name) != p + 6 + 4 || strncmp(name, prefix, p) != 0 || strcmp(name + p + 6, ".bin") != 0) return 0;
    uint64_t idx = 0;
    for (size_t i = p; i < p + 6; i++) {
        if (name[i] < '0' || name[i] > '9') return 0;
        idx = idx * 10 + (uint64_t)(name[i] - '0');
    }
    return idx < count;
}

/* Without --overwrite: dies if dir already holds shards. With it, and n_train/n_val set
 * (after writing): removes every shard the new run did not write, so 'DIR/train_*.bin'
 * matches exactly the new data. */
static void scan_shards(const char *dir, int remove_stale, uint64_t n_train, uint64_t n_val) {
    DIR *d = opendir(dir);
    if (!d) vd_die("prepare-data: --out: %s: cannot list directory (%s)", dir, strerror(errno));
    struct dirent *e;
    errno = 0;
    while ((e = readdir(d)) != NULL) {
        const char *name = e->d_name;
        int train = is_shard_name(name, "train_"), val = is_shard_name(name, "val_");
        if (!train && !val) continue;
        if (!remove_stale) {
            /* d_name lives inside the DIR buffer: copy it before closedir frees that */
            char found[256];
            snprintf(found, sizeof(found), "%s", name);
            closedir(d);
            vd_die("prepare-data: --out: %s already holds token shards (%s); pass --overwrite to replace them", dir, found);
        }
        if ((train && is_ours(name, "train_", n_train)) || (val && is_ours(name, "val_", n_val))) continue;
        char path[VD_PATH_MAX];
        if (snprintf(path, sizeof(path), "%s/%s", dir, name) >= (int)sizeof(path))
            vd_die("prepare-data: --out: %s/%s: path too long", dir, name);
        if (unlink(path) != 0 && errno != ENOENT)
            vd_die("prepare-data: --out: %s: cannot remove stale shard (%s)", path, strerror(errno));
        errno = 0;
    }
    if (errno != 0) vd_die("prepare-data: --out: %s: reading the directory failed (%s)", dir, strerror(errno));
    if (closedir(d) != 0) vd_die("prepare-data: --out: %s: close failed (%s)", dir, strerror(errno));
}

/* Reads n_bytes from f into shards dir/prefix000000.bin, ...; returns the shard count. */
static uint64_t write_part(FILE *f, const char *in_path, const char *dir, const char *prefix, uint64_t n_bytes,
                           uint64_t shard_tokens, uint8_t *bytes, uint16_t *tokens) {
    uint64_t n_shards = 0;
    for (uint64_t done = 0; done < n_bytes; n_shards++) {
        uint64_t n = n_bytes - done < shard_tokens ? n_bytes - done : shard_tokens;
        freadCheck(bytes, 1, (size_t)n, f, in_path);
        /* uint8_t, not char: bytes >= 128 must become tokens 128..255, not negative ids */
        for (uint64_t i = 0; i < n; i++) tokens[i] = bytes[i];
        char path[VD_PATH_MAX];
        if (snprintf(path, sizeof(path), "%s/%s%06" PRIu64 ".bin", dir, prefix, n_shards) >= (int)sizeof(path))
            vd_die("prepare-data: --out: %s: path too long", dir);
        vd_shard_write(path, tokens, n);
        done += n;
    }
    return n_shards;
}

/* ---- byte-level mode ---- */

static int prepare_bytes(const prep_opts *o) {
    const char *in = o->in[0];
    /* the split needs the size up front, so no pipes (refused before open: a FIFO blocks) */
    int in_fd = vd_open_regular_as("prepare-data: --in:", in, "a text file");
    FILE *f = fdopen(in_fd, "rb");
    if (!f) vd_die("prepare-data: --in: %s: cannot open (%s)", in, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0) vd_die("prepare-data: --in: %s: cannot stat (%s)", in, strerror(errno));
    if (!S_ISREG(st.st_mode)) vd_die("prepare-data: --in: %s: not a regular file (expected a text file)", in);
    uint64_t n_bytes = (uint64_t)st.st_size;
    if (n_bytes == 0) vd_die("prepare-data: --in: %s is empty (expected text to tokenize)", in);

    /* floor keeps at least one train byte, since val_fraction <= 0.9 */
    uint64_t n_val = (uint64_t)floor((double)n_bytes * o->val_fraction);
    if (n_val >= n_bytes) n_val = n_bytes - 1;
    uint64_t n_train = n_bytes - n_val;
    uint64_t train_shards = (n_train + o->shard_tokens - 1) / o->shard_tokens;
    uint64_t val_shards = (n_val + o->shard_tokens - 1) / o->shard_tokens;
    if (train_shards > MAX_SHARDS || val_shards > MAX_SHARDS)
        vd_die("prepare-data: --shard_tokens: %" PRIu64 " would make %" PRIu64 " shards (at most %llu keep sorted names); raise it",
               o->shard_tokens, train_shards > val_shards ? train_shards : val_shards, (unsigned long long)MAX_SHARDS);

    vd_mkdir_p(o->out);
    if (!o->overwrite) scan_shards(o->out, 0, 0, 0); /* refuse before writing anything */

    uint64_t part_max = n_train > n_val ? n_train : n_val;
    uint64_t buf_tokens = part_max < o->shard_tokens ? part_max : o->shard_tokens;
    uint8_t *bytes = mallocCheck((size_t)buf_tokens);
    uint16_t *tokens = mallocCheck((size_t)buf_tokens * sizeof(uint16_t));
    /* the file is read front to back: train is the head, val the tail */
    uint64_t wrote_train = write_part(f, in, o->out, "train_", n_train, o->shard_tokens, bytes, tokens);
    uint64_t wrote_val = write_part(f, in, o->out, "val_", n_val, o->shard_tokens, bytes, tokens);
    vd_require(wrote_train == train_shards && wrote_val == val_shards);
    free(bytes);
    free(tokens);
    fcloseCheck(f, in);

    if (o->overwrite) scan_shards(o->out, 1, wrote_train, wrote_val);

    vd_log("prepare-data: %s: %" PRIu64 " bytes -> %s: train %" PRIu64 " tokens in %" PRIu64 " shard(s), "
           "val %" PRIu64 " tokens in %" PRIu64 " shard(s) (byte tokens, vocab 256)\n",
           in, n_bytes, o->out, n_train, wrote_train, n_val, wrote_val);
    return 0;
}

/* ---- tokenizer modes ---- */

/* A whole input file, NUL-terminated (files are read whole: they are tokenized whole). label
 * names the option in errors ("--in", "--chat_template"). */
static char *read_input(const char *label, const char *path, size_t *len_out) {
    char prefix[64];
    snprintf(prefix, sizeof(prefix), "prepare-data: %s:", label);
    int fd = vd_open_regular_as(prefix, path, "a text or .jsonl file");
    struct stat st;
    if (fstat(fd, &st) != 0) vd_die("%s %s: cannot stat (%s)", prefix, path, strerror(errno));
    if ((uint64_t)st.st_size >= (uint64_t)SIZE_MAX) vd_die("%s %s: too large", prefix, path);
    size_t n = (size_t)st.st_size;
    if (n == 0) vd_die("%s %s is empty (expected text)", prefix, path);
    char *buf = mallocCheck(n + 1);
    size_t got = 0;
    while (got < n) {
        ssize_t k = read(fd, buf + got, n - got);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) vd_die("%s %s: read failed (%s)", prefix, path, k < 0 ? strerror(errno) : "the file shrank");
        got += (size_t)k;
    }
    close(fd);
    buf[n] = 0;
    *len_out = n;
    return buf;
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* Everything a run writes: tokens, their flags (chat) and where each example starts. */
typedef struct {
    int32_t *tok;
    uint8_t *flag; /* NULL for text */
    uint64_t n, cap;
    uint64_t *ex_start; /* (n_ex) chat: the first token of each example */
    uint64_t n_ex, cap_ex;
    uint64_t n_target;
} token_stream;

static void stream_reserve(token_stream *s, uint64_t extra, int with_flags) {
    if (s->n + extra <= s->cap) return;
    uint64_t cap = s->cap ? s->cap : 1u << 16;
    while (cap < s->n + extra) cap *= 2;
    int32_t *t = realloc(s->tok, (size_t)cap * sizeof(int32_t));
    if (!t) vd_die("prepare-data: out of memory (%" PRIu64 " tokens)", cap);
    s->tok = t;
    if (with_flags) {
        uint8_t *f = realloc(s->flag, (size_t)cap);
        if (!f) vd_die("prepare-data: out of memory (%" PRIu64 " token flags)", cap);
        s->flag = f;
    }
    s->cap = cap;
}

/* Text: the file is one document, after the previous one and its EOS. */
static void add_document(token_stream *s, const vd_tokenizer *tk, const char *path) {
    size_t len;
    char *text = read_input("--in", path, &len);
    vd_tokens ids = {0};
    vd_tokenizer_encode(tk, text, len, 0, &ids);
    free(text);
    if (s->n > 0) {
        int32_t eos = vd_tokenizer_eos(tk);
        if (eos < 0) vd_die("prepare-data: --tokenizer: has no EOS token to put between the documents (pass one file)");
        stream_reserve(s, 1, 0);
        s->tok[s->n++] = eos;
    }
    stream_reserve(s, ids.n, 0);
    memcpy(s->tok + s->n, ids.ids, ids.n * sizeof(int32_t));
    s->n += ids.n;
    vd_tokens_free(&ids);
}

/* Chat: one example per non-blank line. A token takes a loss when its first byte lies inside
 * an assistant span of the rendered text. */
static void add_examples(token_stream *s, const vd_tokenizer *tk, const vd_chat_template *tpl, const char *path) {
    size_t len;
    char *text = read_input("--in", path, &len);
    const char *bos = vd_tokenizer_bos_text(tk), *eos = vd_tokenizer_eos_text(tk);
    unsigned long long lineno = 0;
    uint64_t before = s->n_ex;
    for (size_t at = 0; at < len;) {
        const char *line = text + at;
        const char *nl = memchr(line, '\n', len - at);
        size_t line_len = nl ? (size_t)(nl - line) : len - at;
        at += line_len + (nl ? 1 : 0);
        lineno++;
        size_t k = 0;
        while (k < line_len && (line[k] == ' ' || line[k] == '\t' || line[k] == '\r')) k++;
        if (k == line_len) continue; /* blank lines (a trailing newline, spacing) hold nothing */

        vd_chat_example ex;
        vd_chat_example_parse(&ex, line, line_len, path, lineno);
        size_t rlen = 0, n_spans = 0;
        vd_chat_span *spans = NULL;
        char *rendered = vd_chat_render(tpl, ex.messages, ex.n, 0, bos, eos, &rlen, &spans, &n_spans);
        vd_tokens ids = {0};
        vd_tokenizer_encode(tk, rendered, rlen, VD_TOK_WITH_OFFSETS, &ids);
        if (ids.n == 0) vd_die("%s:%llu: the conversation renders to no tokens", path, lineno);

        stream_reserve(s, ids.n, 1);
        size_t sp = 0;
        uint64_t targets = 0;
        for (size_t i = 0; i < ids.n; i++) {
            uint32_t off = ids.offsets[i];
            while (sp < n_spans && spans[sp].end <= off) sp++; /* offsets rise with i */
            int target = sp < n_spans && spans[sp].begin <= off;
            s->tok[s->n + i] = ids.ids[i];
            s->flag[s->n + i] = (uint8_t)((target ? VD_TOKEN_TARGET : 0) | (i == 0 ? VD_TOKEN_EXAMPLE_START : 0));
            targets += (uint64_t)target;
        }
        /* every assistant turn ends with its end token, so there is always a target */
        if (targets == 0) vd_die("%s:%llu: no token of the assistant turns (nothing would take a loss)", path, lineno);
        if (s->n_ex == s->cap_ex) {
            s->cap_ex = s->cap_ex ? 2 * s->cap_ex : 1024;
            uint64_t *p = realloc(s->ex_start, (size_t)s->cap_ex * sizeof(uint64_t));
            if (!p) vd_die("prepare-data: out of memory (%" PRIu64 " examples)", s->cap_ex);
            s->ex_start = p;
        }
        s->ex_start[s->n_ex++] = s->n;
        s->n += ids.n;
        s->n_target += targets;
        vd_tokens_free(&ids);
        free(rendered);
        free(spans);
        vd_chat_example_free(&ex);
    }
    free(text);
    if (s->n_ex == before) vd_die("prepare-data: --in: %s holds no examples (only blank lines)", path);
}

/* Writes tokens [from, to) of s as shards dir/prefix000000.bin, ...: at most shard_tokens per
 * shard, and for examples whole examples only (an example longer than shard_tokens gets a shard
 * of its own). ex0..ex1 are the examples inside [from, to). Returns the shard count. */
static uint64_t write_v2_part(const token_stream *s, uint64_t from, uint64_t to, uint64_t ex0, uint64_t ex1,
                              const char *dir, const char *prefix, uint64_t shard_tokens, int32_t vocab, int examples) {
    uint64_t n_shards = 0, e = ex0;
    for (uint64_t a = from; a < to; n_shards++) {
        uint64_t b;
        if (!examples) {
            b = to - a < shard_tokens ? to : a + shard_tokens;
        } else {
            /* take examples while they fit; at least one */
            vd_require(s->ex_start[e] == a);
            uint64_t next = e + 1;
            b = next < ex1 ? s->ex_start[next] : to;
            while (next < ex1) {
                uint64_t end = next + 1 < ex1 ? s->ex_start[next + 1] : to;
                if (end - a > shard_tokens) break;
                b = end;
                next++;
            }
            e = next;
        }
        char path[VD_PATH_MAX];
        if (snprintf(path, sizeof(path), "%s/%s%06" PRIu64 ".bin", dir, prefix, n_shards) >= (int)sizeof(path))
            vd_die("prepare-data: --out: %s: path too long", dir);
        if (n_shards >= MAX_SHARDS)
            vd_die("prepare-data: --shard_tokens: %" PRIu64 " makes more than %llu shards (names stay sorted only "
                   "up to that); raise it", shard_tokens, (unsigned long long)MAX_SHARDS);
        vd_shard_data sd = {.tokens = s->tok + a, .flags = s->flag ? s->flag + a : NULL, .n_tokens = b - a,
                            .vocab_size = vocab, .examples = examples};
        vd_shard_write_v2(path, &sd);
        a = b;
    }
    return n_shards;
}

static void load_template(vd_chat_template *tpl, const prep_opts *o, const vd_tokenizer *tk) {
    char what[VD_PATH_MAX + 64];
    if (o->chat_template) {
        if (vd_chat_template_by_name(tpl, o->chat_template)) return;
        if (!vd_path_exists(o->chat_template))
            vd_die("prepare-data: --chat_template: '%s' is neither a template name (%s) nor a file", o->chat_template,
                   "smollm2, qwen2, chatml, llama3");
        size_t len;
        char *text = read_input("--chat_template", o->chat_template, &len);
        snprintf(what, sizeof(what), "prepare-data: --chat_template %s", o->chat_template);
        vd_chat_template_recognise(tpl, text, what);
        free(text);
        return;
    }
    snprintf(what, sizeof(what), "prepare-data: --tokenizer %s", o->tokenizer);
    vd_chat_template_recognise(tpl, vd_tokenizer_chat_template(tk), what);
}

static int prepare_tokenized(const prep_opts *o) {
    /* every input in one mode: text shards and example shards are different things to train on */
    int chat = -1;
    for (int i = 0; i < o->n_in; i++) {
        int c = o->format == FORMAT_CHAT || (o->format == FORMAT_AUTO && ends_with(o->in[i], ".jsonl"));
        if (chat >= 0 && c != chat)
            vd_die("prepare-data: --in: %s is %s but %s is %s (prepare text and instruction data separately, or "
                   "pass --format)", o->in[i], c ? "instruction data (.jsonl)" : "text", o->in[0],
                   chat ? "instruction data (.jsonl)" : "text");
        chat = c;
    }
    if (!chat && o->chat_template)
        vd_die("prepare-data: --chat_template applies to instruction data (.jsonl or --format chat), not to the text "
               "file %s", o->in[0]);
    /* every input exists and is a file before the tokenizer (maybe a large GGUF) is read */
    for (int i = 0; i < o->n_in; i++) close(vd_open_regular_as("prepare-data: --in:", o->in[i], "a text or .jsonl file"));
    /* refuse an occupied DIR now rather than after tokenizing (and again before writing) */
    if (!o->overwrite && vd_path_exists(o->out)) scan_shards(o->out, 0, 0, 0);
    vd_tokenizer *tk = vd_tokenizer_load(o->tokenizer);
    int32_t vocab = vd_tokenizer_vocab_size(tk);
    vd_chat_template tpl = {0};
    if (chat) load_template(&tpl, o, tk);

    token_stream s = {0};
    for (int i = 0; i < o->n_in; i++) {
        if (chat) add_examples(&s, tk, &tpl, o->in[i]);
        else add_document(&s, tk, o->in[i]);
    }
    if (s.n == 0) vd_die("prepare-data: --in: the input tokenizes to no tokens");

    /* val is the tail: whole examples for chat, tokens for text (at least one train unit kept) */
    uint64_t units = chat ? s.n_ex : s.n;
    uint64_t n_val = (uint64_t)floor((double)units * o->val_fraction);
    if (n_val >= units) n_val = units - 1;
    uint64_t split = chat ? (n_val ? s.ex_start[units - n_val] : s.n) : s.n - n_val;

    vd_mkdir_p(o->out);
    if (!o->overwrite) scan_shards(o->out, 0, 0, 0); /* refuse before writing anything */
    uint64_t wrote_train = write_v2_part(&s, 0, split, 0, units - n_val, o->out, "train_", o->shard_tokens, vocab, chat);
    uint64_t wrote_val = write_v2_part(&s, split, s.n, units - n_val, units, o->out, "val_", o->shard_tokens, vocab, chat);
    if (o->overwrite) scan_shards(o->out, 1, wrote_train, wrote_val);

    if (chat)
        vd_log("prepare-data: %d file(s), template %s: %" PRIu64 " examples, %" PRIu64 " tokens (%.1f%% take a loss) -> "
               "%s: train %" PRIu64 " examples in %" PRIu64 " shard(s), val %" PRIu64 " examples in %" PRIu64
               " shard(s) (vocab %" PRId32 ", uint%d tokens)\n",
               o->n_in, tpl.name, s.n_ex, s.n, 100.0 * (double)s.n_target / (double)s.n, o->out, units - n_val,
               wrote_train, n_val, wrote_val, vocab, 8 * vd_shard_token_bytes(vocab));
    else
        vd_log("prepare-data: %d document(s): %" PRIu64 " tokens -> %s: train %" PRIu64 " tokens in %" PRIu64
               " shard(s), val %" PRIu64 " tokens in %" PRIu64 " shard(s) (vocab %" PRId32 ", uint%d tokens)\n",
               o->n_in, s.n, o->out, split, wrote_train, n_val, wrote_val, vocab, 8 * vd_shard_token_bytes(vocab));
    free(s.tok);
    free(s.flag);
    free(s.ex_start);
    vd_chat_template_free(&tpl);
    vd_tokenizer_free(tk);
    return 0;
}

int vd_prepare_data_main(int argc, char **argv) {
    prep_opts o;
    if (!parse_args(&o, argc, argv)) return 0;
    return o.tokenizer ? prepare_tokenized(&o) : prepare_bytes(&o);
}
