/* data.c: llm.c token shards, memory-mapped.
 *
 * A shard is a 1024-byte header (256 int32: magic, version, token count, zeros) followed by
 * `count` uint16 tokens, little-endian (the layout llm.c's data scripts write). We map each
 * file read-only instead of reading it: datasets can be many GB, every rank of a node shares
 * the same page-cache pages, and a sequence is a plain pointer into the map.
 *
 * Sequences (seq_len + 1 tokens: inputs plus the targets shifted by one) never cross a shard,
 * so shard s holds (n_tokens_s - 1) / seq_len of them and a few tail tokens may go unused.
 * They are numbered globally in shard order (sorted glob order); seq_start[] is the running
 * sum, so finding a sequence's shard is a binary search. See docs/data-format.md. */
#define _POSIX_C_SOURCE 200809L
#include "vera/data.h"

#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vera/common.h"

#define HEADER_BYTES ((uint64_t)VD_SHARD_HEADER_INTS * sizeof(int32_t))

static char *dup_string(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = mallocCheck(n);
    memcpy(p, s, n);
    return p;
}

/* Maps one shard and checks its header against its size. Fills slot i of ds. */
static void open_shard(vd_dataset *ds, int32_t i, const char *path) {
    const char *what = ds->what;
    /* a directory or FIFO can match the glob too: refused before open (a FIFO would block) */
    char label[80];
    snprintf(label, sizeof(label), "%s:", what);
    int fd = vd_open_regular_as(label, path, "an llm.c token shard");
    struct stat st;
    if (fstat(fd, &st) != 0) vd_die("%s: %s: cannot stat (%s)", what, path, strerror(errno));
    uint64_t file_bytes = (uint64_t)st.st_size;
    if (file_bytes < HEADER_BYTES)
        vd_die("%s: %s: truncated: %" PRIu64 " bytes, shorter than the %" PRIu64 "-byte shard header",
               what, path, file_bytes, HEADER_BYTES);
    if (file_bytes > (uint64_t)SIZE_MAX) vd_die("%s: %s: too large to map (%" PRIu64 " bytes)", what, path, file_bytes);

    size_t map_bytes = (size_t)file_bytes;
    void *map = mmap(NULL, map_bytes, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) vd_die("%s: %s: mmap of %zu bytes failed (%s)", what, path, map_bytes, strerror(errno));
    /* the mapping keeps the file alive; the descriptor is no longer needed */
    if (close(fd) != 0) vd_die("%s: %s: close failed (%s)", what, path, strerror(errno));
    /* Ranks walk their shards front to back, so ask for read-ahead. This is only advice:
     * a kernel that refuses it reads the same bytes, just slower, so its result is ignored. */
    (void)posix_madvise(map, map_bytes, POSIX_MADV_SEQUENTIAL);

    /* memcpy rather than a cast: no assumption about how the map is aligned or aliased */
    int32_t header[VD_SHARD_HEADER_INTS];
    memcpy(header, map, sizeof(header));
    if (header[0] != VD_SHARD_MAGIC)
        vd_die("%s: %s: wrong magic %" PRId32 " (expected %d; is this an llm.c token shard?)",
               what, path, header[0], VD_SHARD_MAGIC);
    if (header[1] != VD_SHARD_VERSION)
        vd_die("%s: %s: unsupported version %" PRId32 " (expected %d: uint16 tokens)",
               what, path, header[1], VD_SHARD_VERSION);
    if (header[2] < 0)
        vd_die("%s: %s: header token count %" PRId32 " is negative (expected >= 0)", what, path, header[2]);
    uint64_t n_tokens = (uint64_t)header[2];
    uint64_t want_bytes = HEADER_BYTES + n_tokens * sizeof(uint16_t);
    if (file_bytes < want_bytes)
        vd_die("%s: %s: truncated: header says %" PRIu64 " tokens (%" PRIu64 " bytes), file has %" PRIu64 " bytes",
               what, path, n_tokens, want_bytes, file_bytes);
    if (file_bytes > want_bytes)
        vd_die("%s: %s: too long: header says %" PRIu64 " tokens (%" PRIu64 " bytes), file has %" PRIu64 " bytes",
               what, path, n_tokens, want_bytes, file_bytes);

    ds->paths[i] = dup_string(path);
    ds->maps[i] = map;
    ds->map_sizes[i] = map_bytes;
    ds->tokens[i] = (const uint16_t *)((const char *)map + HEADER_BYTES);
    ds->n_tokens[i] = n_tokens;
}

void vd_dataset_open(vd_dataset *ds, const char *pattern, int32_t seq_len, int32_t vocab_size, int32_t pack,
                     const char *what) {
    memset(ds, 0, sizeof(*ds));
    (void)pack; /* plain-text shards have no examples to pack */
    snprintf(ds->what, sizeof(ds->what), "%s", what);
    /* config.c range-checks these; still say which key if a caller passes nonsense */
    if (seq_len < 1) vd_die("%s: seq_len %" PRId32 " must be >= 1", ds->what, seq_len);
    if (vocab_size < 1) vd_die("%s: vocab size %" PRId32 " must be >= 1", ds->what, vocab_size);
    ds->seq_len = seq_len;
    ds->vocab_size = vocab_size;

    /* glob sorts its matches, which fixes the shard order (and so the sequence numbering)
     * independently of the directory order; without GLOB_NOCHECK no match is an error */
    glob_t g;
    int rc = glob(pattern, 0, NULL, &g);
    if (rc == GLOB_NOMATCH) vd_die("%s: no files match '%s'", ds->what, pattern);
    if (rc == GLOB_ABORTED) vd_die("%s: cannot read a directory while matching '%s'", ds->what, pattern);
    if (rc != 0) vd_die("%s: glob of '%s' failed (out of memory?)", ds->what, pattern);
    if (g.gl_pathc > (size_t)INT32_MAX) vd_die("%s: '%s' matches %zu files (at most %d)", ds->what, pattern, g.gl_pathc, INT32_MAX);

    int32_t n = (int32_t)g.gl_pathc;
    ds->n_shards = n;
    ds->paths = callocCheck((size_t)n, sizeof(char *));
    ds->maps = callocCheck((size_t)n, sizeof(void *));
    ds->map_sizes = callocCheck((size_t)n, sizeof(size_t));
    ds->tokens = callocCheck((size_t)n, sizeof(uint16_t *));
    ds->n_tokens = callocCheck((size_t)n, sizeof(uint64_t));
    ds->seq_start = callocCheck((size_t)n + 1, sizeof(uint64_t));

    uint64_t total = 0;
    for (int32_t i = 0; i < n; i++) {
        open_shard(ds, i, g.gl_pathv[i]);
        /* a shard too short for one sequence contributes none: seq_start[i] == seq_start[i+1] */
        uint64_t t = ds->n_tokens[i];
        uint64_t k = t >= (uint64_t)seq_len + 1 ? (t - 1) / (uint64_t)seq_len : 0;
        ds->seq_start[i] = total;
        total += k;
    }
    ds->seq_start[n] = total;
    ds->n_seqs = total;
    globfree(&g);

    if (total == 0)
        vd_die("%s: no shard holds a full sequence of seq_len+1 = %" PRId64 " tokens ('%s', %" PRId32 " file(s))",
               ds->what, (int64_t)seq_len + 1, pattern, n);
}

/* Shard holding global sequence m < n_seqs: the last s with seq_start[s] <= m. Empty shards
 * share their seq_start with the next one, so "last" skips them. */
static int32_t find_shard(const vd_dataset *ds, uint64_t m) {
    int32_t lo = 0, hi = ds->n_shards; /* seq_start[lo] <= m < seq_start[hi] */
    while (hi - lo > 1) {
        int32_t mid = lo + (hi - lo) / 2;
        if (ds->seq_start[mid] <= m) lo = mid;
        else hi = mid;
    }
    return lo;
}

static void die_bad_token(const vd_dataset *ds, int32_t s, uint64_t offset, uint16_t id) {
    vd_die("%s: %s: token id %u at token offset %" PRIu64 " is >= the model's vocab size %" PRId32,
           ds->what, ds->paths[s], (unsigned)id, offset, ds->vocab_size);
}

void vd_dataset_get(const vd_dataset *ds, uint64_t n, int32_t *inputs, int32_t *targets, int32_t *pos) {
    vd_require(ds->n_seqs > 0);
    uint64_t m = n % ds->n_seqs;
    int32_t s = find_shard(ds, m);
    uint64_t T = (uint64_t)ds->seq_len;
    uint64_t offset = (m - ds->seq_start[s]) * T;
    vd_require(offset + T < ds->n_tokens[s]); /* the T+1 tokens lie inside the shard */
    const uint16_t *tok = ds->tokens[s] + offset;
    /* Ids are checked here, lazily, because scanning a multi-GB dataset at start-up costs
     * minutes; an id past the embedding table would otherwise read out of bounds. */
    for (uint64_t i = 0; i <= T; i++) {
        if (tok[i] >= (uint32_t)ds->vocab_size) die_bad_token(ds, s, offset + i, tok[i]);
    }
    for (uint64_t i = 0; i < T; i++) {
        inputs[i] = tok[i];
        targets[i] = tok[i + 1];
        pos[i] = (int32_t)i;
    }
}

uint32_t vd_dataset_target_count(const vd_dataset *ds, uint64_t n) {
    (void)n;
    return (uint32_t)ds->seq_len;
}

void vd_dataset_validate_all(const vd_dataset *ds) { vd_dataset_validate_part(ds, 0, 1); }

void vd_dataset_validate_part(const vd_dataset *ds, int32_t part, int32_t parts) {
    /* Every token of every file, including tail tokens no sequence uses: an out-of-range id
     * anywhere means the shards were made with another tokenizer. */
    for (int32_t s = part; s < ds->n_shards; s += parts) {
        const uint16_t *tok = ds->tokens[s];
        uint64_t n = ds->n_tokens[s];
        for (uint64_t i = 0; i < n; i++) {
            if (tok[i] >= (uint32_t)ds->vocab_size) die_bad_token(ds, s, i, tok[i]);
        }
    }
}

uint64_t vd_dataset_epoch(const vd_dataset *ds, uint64_t n) {
    vd_require(ds->n_seqs > 0);
    return n / ds->n_seqs;
}

void vd_dataset_close(vd_dataset *ds) {
    for (int32_t i = 0; i < ds->n_shards; i++) {
        if (ds->maps && ds->maps[i] && munmap(ds->maps[i], ds->map_sizes[i]) != 0)
            vd_die("%s: %s: munmap failed (%s)", ds->what, ds->paths[i], strerror(errno));
        if (ds->paths) free(ds->paths[i]);
    }
    free(ds->paths);
    free(ds->maps);
    free(ds->map_sizes);
    free((void *)ds->tokens);
    free(ds->n_tokens);
    free(ds->seq_start);
    memset(ds, 0, sizeof(*ds));
}

void vd_shard_write(const char *path, const uint16_t *tokens, uint64_t n_tokens) {
    /* the header's count is an int32: a larger shard could not be read back */
    if (n_tokens > (uint64_t)INT32_MAX)
        vd_die("%s: %" PRIu64 " tokens do not fit one shard (the header count is int32, at most %d)",
               path, n_tokens, INT32_MAX);
    uint64_t bytes = HEADER_BYTES + n_tokens * sizeof(uint16_t);
    if (bytes > (uint64_t)SIZE_MAX) vd_die("%s: shard of %" PRIu64 " bytes is too large for memory", path, bytes);
    /* One buffer, one atomic write: a crash never leaves a shard whose header disagrees
     * with its size. Shards are at most ~4 GB, so holding one in memory is fine. */
    char *buf = mallocCheck((size_t)bytes);
    int32_t header[VD_SHARD_HEADER_INTS];
    memset(header, 0, sizeof(header));
    header[0] = VD_SHARD_MAGIC;
    header[1] = VD_SHARD_VERSION;
    header[2] = (int32_t)n_tokens;
    memcpy(buf, header, sizeof(header));
    if (n_tokens > 0) memcpy(buf + HEADER_BYTES, tokens, (size_t)n_tokens * sizeof(uint16_t));
    vd_write_file_atomic(path, buf, (size_t)bytes);
    free(buf);
}
