/* prepare_data.c: `vera-dist prepare-data`, text file -> llm.c token shards.
 *
 * Tokens are bytes (token id = byte value, vocab 256), so a smoke run or a tutorial needs no
 * tokenizer and no Python: any text file becomes train/val shards the trainer reads directly
 * (train with a model whose vocab_size is >= 256). Real GPT-2 token shards come from llm.c's
 * data scripts and use the same format.
 *
 * The input is streamed one shard at a time, so its size is bounded by disk, not memory. */
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

#include "vera/common.h"
#include "vera/data.h"

#define DEFAULT_VAL_FRACTION 0.1
#define MAX_VAL_FRACTION 0.9
#define DEFAULT_SHARD_TOKENS 100000000ULL
/* names carry a 6-digit index; a 7th digit would sort train_1000000 before train_100001 */
#define MAX_SHARDS 1000000ULL

typedef struct {
    const char *in;
    const char *out;
    double val_fraction;
    uint64_t shard_tokens;
    int overwrite;
} prep_opts;

static void print_usage(FILE *f) {
    fprintf(f,
            "usage: vera-dist prepare-data --in TEXT --out DIR [--val_fraction F] [--shard_tokens N] [--overwrite]\n"
            "\n"
            "Turns a text file into llm.c token shards with byte-level tokens (token = byte, vocab 256).\n"
            "The last F of the bytes go to DIR/val_000000.bin, the rest to DIR/train_000000.bin,\n"
            "train_000001.bin, ...; point train_data at 'DIR/train_*.bin' and val_data at 'DIR/val_*.bin'.\n"
            "\n"
            "  --in TEXT           input file (any bytes; must be a regular, non-empty file)\n"
            "  --out DIR           output directory, created if missing\n"
            "  --val_fraction F    fraction of the bytes for validation, in [0, %.1f] (default %.1f; 0 = no val shard)\n"
            "  --shard_tokens N    at most N tokens per shard, in [1, %d] (default %llu)\n"
            "  --overwrite         replace shards already in DIR (stale ones beyond the new count are removed;\n"
            "                      also --overwrite 1|0)\n"
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
    o->in = NULL;
    o->out = NULL;
    o->val_fraction = DEFAULT_VAL_FRACTION;
    o->shard_tokens = DEFAULT_SHARD_TOKENS;
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            print_usage(stdout);
            return 0;
        }
    o->overwrite = vd_cli_take_flag(&argc, argv, "overwrite", "prepare-data") == 1;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strncmp(arg, "--", 2) != 0)
            vd_die("prepare-data: unexpected argument '%s' (options start with --; see --help)", arg);
        const char *name = arg + 2;
        const char *eq = strchr(name, '=');
        size_t name_len = eq ? (size_t)(eq - name) : strlen(name);
        const char *value = eq ? eq + 1 : NULL;
#define IS(key) (name_len == strlen(key) && strncmp(name, key, name_len) == 0)
        if (!IS("in") && !IS("out") && !IS("val_fraction") && !IS("shard_tokens"))
            vd_die("prepare-data: unknown option '%s' (see --help)", arg);
        if (!value) {
            if (i + 1 >= argc) vd_die("prepare-data: --%.*s needs a value", (int)name_len, name);
            value = argv[++i];
        }
        if (IS("in")) o->in = value;
        else if (IS("out")) o->out = value;
        else if (IS("val_fraction")) o->val_fraction = parse_fraction(value);
        else o->shard_tokens = parse_shard_tokens(value);
#undef IS
    }
    if (!o->in || !o->in[0]) vd_die("prepare-data: --in is required (the text file to tokenize; see --help)");
    if (!o->out || !o->out[0]) vd_die("prepare-data: --out is required (the directory for the shards; see --help)");
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

int vd_prepare_data_main(int argc, char **argv) {
    prep_opts o;
    if (!parse_args(&o, argc, argv)) return 0;

    /* the split needs the size up front, so no pipes (refused before open: a FIFO blocks) */
    int in_fd = vd_open_regular_as("prepare-data: --in:", o.in, "a text file");
    FILE *f = fdopen(in_fd, "rb");
    if (!f) vd_die("prepare-data: --in: %s: cannot open (%s)", o.in, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0) vd_die("prepare-data: --in: %s: cannot stat (%s)", o.in, strerror(errno));
    /* the split needs the size up front, so no pipes */
    if (!S_ISREG(st.st_mode)) vd_die("prepare-data: --in: %s: not a regular file (expected a text file)", o.in);
    uint64_t n_bytes = (uint64_t)st.st_size;
    if (n_bytes == 0) vd_die("prepare-data: --in: %s is empty (expected text to tokenize)", o.in);

    /* floor keeps at least one train byte, since val_fraction <= 0.9 */
    uint64_t n_val = (uint64_t)floor((double)n_bytes * o.val_fraction);
    if (n_val >= n_bytes) n_val = n_bytes - 1;
    uint64_t n_train = n_bytes - n_val;
    uint64_t train_shards = (n_train + o.shard_tokens - 1) / o.shard_tokens;
    uint64_t val_shards = (n_val + o.shard_tokens - 1) / o.shard_tokens;
    if (train_shards > MAX_SHARDS || val_shards > MAX_SHARDS)
        vd_die("prepare-data: --shard_tokens: %" PRIu64 " would make %" PRIu64 " shards (at most %llu keep sorted names); raise it",
               o.shard_tokens, train_shards > val_shards ? train_shards : val_shards, (unsigned long long)MAX_SHARDS);

    vd_mkdir_p(o.out);
    if (!o.overwrite) scan_shards(o.out, 0, 0, 0); /* refuse before writing anything */

    uint64_t part_max = n_train > n_val ? n_train : n_val;
    uint64_t buf_tokens = part_max < o.shard_tokens ? part_max : o.shard_tokens;
    uint8_t *bytes = mallocCheck((size_t)buf_tokens);
    uint16_t *tokens = mallocCheck((size_t)buf_tokens * sizeof(uint16_t));
    /* the file is read front to back: train is the head, val the tail */
    uint64_t wrote_train = write_part(f, o.in, o.out, "train_", n_train, o.shard_tokens, bytes, tokens);
    uint64_t wrote_val = write_part(f, o.in, o.out, "val_", n_val, o.shard_tokens, bytes, tokens);
    vd_require(wrote_train == train_shards && wrote_val == val_shards);
    free(bytes);
    free(tokens);
    fcloseCheck(f, o.in);

    if (o.overwrite) scan_shards(o.out, 1, wrote_train, wrote_val);

    vd_log("prepare-data: %s: %" PRIu64 " bytes -> %s: train %" PRIu64 " tokens in %" PRIu64 " shard(s), "
           "val %" PRIu64 " tokens in %" PRIu64 " shard(s) (byte tokens, vocab 256)\n",
           o.in, n_bytes, o.out, n_train, wrote_train, n_val, wrote_val);
    return 0;
}
