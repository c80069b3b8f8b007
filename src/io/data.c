/* data.c: token shards, memory-mapped.
 *
 * Two layouts share a 1024-byte header of 256 int32 (docs/data-format.md):
 *   v1 (llm.c): magic, version 1, int32 count, zeros; then `count` uint16 tokens.
 *   v2: magic, version 2, uint64 count, token width (2 or 4), flags, the tokenizer's vocab,
 *       uint64 hash of the payload, zeros; then the tokens and, when flagged, one flag byte per
 *       token (VD_TOKEN_TARGET, VD_TOKEN_EXAMPLE_START).
 * We map each file read-only instead of reading it: datasets can be many GB, every rank of a
 * node shares the same page-cache pages, and a sequence is a plain pointer into the map.
 *
 * Sequences never cross a shard. A plain-text shard is cut into windows of seq_len + 1 tokens
 * (inputs plus the targets shifted by one), so shard s holds (n_tokens_s - 1) / seq_len of them
 * and a few tail tokens may go unused. A shard of examples gives one sequence per example, or
 * with pack, one per greedy run of consecutive examples; the runs are fixed at open from the
 * file alone, so they do not depend on the world size. Sequences are numbered globally in
 * shard order (sorted glob order); seq_start[] is the running sum, so finding a sequence's
 * shard is a binary search. */
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
#define KNOWN_SHARD_FLAGS (VD_SHARD_HAS_FLAGS | VD_SHARD_EXAMPLES)
#define KNOWN_TOKEN_FLAGS (VD_TOKEN_TARGET | VD_TOKEN_EXAMPLE_START)

static char *dup_string(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = mallocCheck(n);
    memcpy(p, s, n);
    return p;
}

static uint64_t header_u64(const int32_t *h, int slot) {
    return (uint64_t)(uint32_t)h[slot] | ((uint64_t)(uint32_t)h[slot + 1] << 32);
}

static void header_put_u64(int32_t *h, int slot, uint64_t v) {
    uint32_t lo = (uint32_t)v, hi = (uint32_t)(v >> 32);
    memcpy(&h[slot], &lo, sizeof(lo));
    memcpy(&h[slot + 1], &hi, sizeof(hi));
}

/* Token i of a shard. Little-endian bytes assembled explicitly: the map has no alignment
 * guarantee for uint32 and the format is little-endian whatever the host. */
static inline uint32_t token_at(const vd_shard *sh, uint64_t i) {
    const uint8_t *p = sh->tokens + i * (uint64_t)sh->token_bytes;
    if (sh->token_bytes == 2) return (uint32_t)p[0] | ((uint32_t)p[1] << 8);
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

/* The file holds exactly the bytes its header announces (both versions). */
static void check_shard_size(const char *what, const char *path, uint64_t n_tokens, uint64_t want_bytes,
                             uint64_t file_bytes) {
    if (file_bytes < want_bytes)
        vd_die("%s: %s: truncated: header says %" PRIu64 " tokens (%" PRIu64 " bytes), file has %" PRIu64 " bytes",
               what, path, n_tokens, want_bytes, file_bytes);
    if (file_bytes > want_bytes)
        vd_die("%s: %s: too long: header says %" PRIu64 " tokens (%" PRIu64 " bytes), file has %" PRIu64 " bytes",
               what, path, n_tokens, want_bytes, file_bytes);
}

/* v1: the int32 count and uint16 tokens llm.c writes. */
static void parse_header_v1(const char *what, const char *path, const int32_t *header, uint64_t file_bytes,
                            vd_shard *sh) {
    if (header[2] < 0)
        vd_die("%s: %s: header token count %" PRId32 " is negative (expected >= 0)", what, path, header[2]);
    uint64_t n_tokens = (uint64_t)header[2];
    uint64_t want_bytes = HEADER_BYTES + n_tokens * sizeof(uint16_t);
    check_shard_size(what, path, n_tokens, want_bytes, file_bytes);
    sh->version = 1;
    sh->n_tokens = n_tokens;
    sh->token_bytes = 2;
}

/* v2: every field is checked before the payload is touched, then the payload's hash. */
/* Returns the header's flags (VD_SHARD_*). */
static int32_t parse_header_v2(const char *what, const char *path, const int32_t *header, uint64_t file_bytes,
                               int32_t model_vocab, vd_shard *sh) {
    uint64_t n_tokens = header_u64(header, VD_SHARD_H_COUNT);
    int32_t width = header[VD_SHARD_H_TOKEN_BYTES];
    int32_t flags = header[VD_SHARD_H_FLAGS];
    int32_t vocab = header[VD_SHARD_H_VOCAB];
    if (width != 2 && width != 4)
        vd_die("%s: %s: token width %" PRId32 " bytes (expected 2 for uint16 or 4 for uint32)", what, path, width);
    if (flags & ~KNOWN_SHARD_FLAGS)
        vd_die("%s: %s: header flags 0x%" PRIx32 " have unknown bits (known: 1 = per-token flags, 2 = examples)", what,
               path, (uint32_t)flags);
    if ((flags & VD_SHARD_EXAMPLES) && !(flags & VD_SHARD_HAS_FLAGS))
        vd_die("%s: %s: header says it holds examples but has no per-token flag array (flags 0x%" PRIx32 ")", what,
               path, (uint32_t)flags);
    if (vocab < 1) vd_die("%s: %s: header vocab size %" PRId32 " (expected >= 1)", what, path, vocab);
    if (vocab > model_vocab)
        vd_die("%s: %s: made with a tokenizer of %" PRId32 " tokens, more than the model's vocab size %" PRId32
               " (another tokenizer's data?)", what, path, vocab, model_vocab);
    for (int i = VD_SHARD_H_VOCAB + 1; i < VD_SHARD_HEADER_INTS; i++) {
        if (i == VD_SHARD_H_HASH || i == VD_SHARD_H_HASH + 1) continue; /* slot 7, then 10..255 */
        if (header[i] != 0)
            vd_die("%s: %s: reserved header int %d is %" PRId32 " (expected 0; a newer format?)", what, path, i,
                   header[i]);
    }
    /* bytes per token: the id plus the flag byte; a count this large cannot be a real file */
    uint64_t per_token = (uint64_t)width + ((flags & VD_SHARD_HAS_FLAGS) ? 1 : 0);
    if (n_tokens > (UINT64_MAX - HEADER_BYTES) / per_token)
        vd_die("%s: %s: header token count %" PRIu64 " is impossibly large (file has %" PRIu64 " bytes)", what, path,
               n_tokens, file_bytes);
    uint64_t want_bytes = HEADER_BYTES + n_tokens * per_token;
    check_shard_size(what, path, n_tokens, want_bytes, file_bytes);
    sh->version = 2;
    sh->n_tokens = n_tokens;
    sh->token_bytes = width;
    sh->tokenizer_vocab = vocab;
    sh->examples = (flags & VD_SHARD_EXAMPLES) != 0;
    return flags;
}

/* The flag bytes: known bits only, and a shard of examples starts with one. Builds the
 * example index (ex_start) in the same pass. */
static void scan_flags(const char *what, const char *path, vd_shard *sh) {
    const uint8_t *f = sh->flags;
    uint64_t n = sh->n_tokens, n_ex = 0;
    uint8_t allowed = sh->examples ? KNOWN_TOKEN_FLAGS : VD_TOKEN_TARGET;
    for (uint64_t i = 0; i < n; i++) {
        if (f[i] & ~allowed) {
            if (f[i] & ~KNOWN_TOKEN_FLAGS)
                vd_die("%s: %s: flag byte 0x%02x of token %" PRIu64 " has unknown bits (known: 1 = target, 2 = example "
                       "start)", what, path, f[i], i);
            vd_die("%s: %s: token %" PRIu64 " is flagged as an example start, but the header does not say the shard "
                   "holds examples", what, path, i);
        }
        n_ex += (f[i] & VD_TOKEN_EXAMPLE_START) != 0;
    }
    if (!sh->examples) return;
    if (n > 0 && !(f[0] & VD_TOKEN_EXAMPLE_START))
        vd_die("%s: %s: the first token does not start an example (flag byte 0x%02x; expected bit 2 set)", what, path,
               f[0]);
    sh->n_examples = n_ex;
    sh->ex_start = mallocCheck((size_t)(n_ex + 1) * sizeof(uint64_t));
    uint64_t k = 0;
    for (uint64_t i = 0; i < n; i++) {
        if (f[i] & VD_TOKEN_EXAMPLE_START) sh->ex_start[k++] = i;
    }
    sh->ex_start[n_ex] = n;
}

/* Maps one shard and checks its header against its size. Fills slot i of ds. */
static void open_shard(vd_dataset *ds, int32_t i, const char *path) {
    const char *what = ds->what;
    /* a directory or FIFO can match the glob too: refused before open (a FIFO would block) */
    char label[80];
    snprintf(label, sizeof(label), "%s:", what);
    int fd = vd_open_regular_as(label, path, "a token shard");
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
    vd_shard *sh = &ds->shards[i];
    memset(sh, 0, sizeof(*sh));
    int32_t flags = 0;
    if (header[1] == VD_SHARD_VERSION) parse_header_v1(what, path, header, file_bytes, sh);
    else if (header[1] == VD_SHARD_VERSION_2) flags = parse_header_v2(what, path, header, file_bytes, ds->vocab_size, sh);
    else
        vd_die("%s: %s: unsupported version %" PRId32 " (expected 1: llm.c uint16 tokens, or 2)",
               what, path, header[1]);

    const uint8_t *payload = (const uint8_t *)map + HEADER_BYTES;
    sh->tokens = payload;
    if (flags & VD_SHARD_HAS_FLAGS) sh->flags = payload + sh->n_tokens * (uint64_t)sh->token_bytes;
    if (sh->version == 2) {
        /* corruption (a bad copy, a flipped bit) would otherwise train silently on wrong data */
        uint64_t want = header_u64(header, VD_SHARD_H_HASH);
        uint64_t got = vd_hash64(payload, (size_t)(file_bytes - HEADER_BYTES), 0);
        if (got != want)
            vd_die("%s: %s: payload hash %016" PRIx64 " differs from the header's %016" PRIx64 " (corrupt file)", what,
                   path, got, want);
        if (sh->flags) scan_flags(what, path, sh);
    }
    ds->paths[i] = dup_string(path);
    ds->maps[i] = map;
    ds->map_sizes[i] = map_bytes;
    ds->n_tokens[i] = sh->n_tokens;
}

static uint64_t example_len(const vd_shard *sh, uint64_t e) { return sh->ex_start[e + 1] - sh->ex_start[e]; }

/* Sequences of shard sh: windows for text; examples one each, or greedily packed. */
static uint64_t shard_sequences(vd_dataset *ds, vd_shard *sh) {
    uint64_t T = (uint64_t)ds->seq_len;
    if (!sh->examples) return sh->n_tokens >= T + 1 ? (sh->n_tokens - 1) / T : 0;
    for (uint64_t e = 0; e < sh->n_examples; e++) ds->n_truncated += example_len(sh, e) > T;
    if (!ds->pack) return sh->n_examples;
    /* Greedy in file order: a sequence takes the next example while the (truncated) lengths
     * still sum to <= T. Never reordered, so the packing is a function of the file alone. */
    sh->seq_ex = mallocCheck((size_t)(sh->n_examples + 1) * sizeof(uint64_t));
    uint64_t k = 0, e = 0;
    while (e < sh->n_examples) {
        sh->seq_ex[k++] = e;
        uint64_t used = 0;
        while (e < sh->n_examples) {
            uint64_t L = example_len(sh, e);
            if (L > T) L = T;
            if (used > 0 && used + L > T) break;
            used += L;
            e++;
        }
    }
    sh->seq_ex[k] = sh->n_examples;
    return k;
}

void vd_dataset_open(vd_dataset *ds, const char *pattern, int32_t seq_len, int32_t vocab_size, int32_t pack,
                     const char *what) {
    memset(ds, 0, sizeof(*ds));
    snprintf(ds->what, sizeof(ds->what), "%s", what);
    /* config.c range-checks these; still say which key if a caller passes nonsense */
    if (seq_len < 1) vd_die("%s: seq_len %" PRId32 " must be >= 1", ds->what, seq_len);
    if (vocab_size < 1) vd_die("%s: vocab size %" PRId32 " must be >= 1", ds->what, vocab_size);
    if (pack != 0 && pack != 1) vd_die("%s: pack %" PRId32 " must be 0 or 1", ds->what, pack);
    ds->seq_len = seq_len;
    ds->vocab_size = vocab_size;
    ds->pack = pack;

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
    ds->shards = callocCheck((size_t)n, sizeof(vd_shard));
    ds->n_tokens = callocCheck((size_t)n, sizeof(uint64_t));
    ds->seq_start = callocCheck((size_t)n + 1, sizeof(uint64_t));

    uint64_t total = 0, n_examples = 0;
    int any_examples = 0;
    for (int32_t i = 0; i < n; i++) {
        open_shard(ds, i, g.gl_pathv[i]);
        /* a shard too short for one sequence contributes none: seq_start[i] == seq_start[i+1] */
        vd_shard *sh = &ds->shards[i];
        sh->n_seqs = shard_sequences(ds, sh);
        any_examples |= sh->examples;
        n_examples += sh->n_examples;
        ds->seq_start[i] = total;
        total += sh->n_seqs;
    }
    ds->seq_start[n] = total;
    ds->n_seqs = total;
    globfree(&g);

    if (total == 0) {
        if (any_examples)
            vd_die("%s: no shard holds an example or a full sequence of seq_len+1 = %" PRId64 " tokens ('%s', %" PRId32
                   " file(s))", ds->what, (int64_t)seq_len + 1, pattern, n);
        vd_die("%s: no shard holds a full sequence of seq_len+1 = %" PRId64 " tokens ('%s', %" PRId32 " file(s))",
               ds->what, (int64_t)seq_len + 1, pattern, n);
    }
    if (ds->n_truncated > 0)
        vd_log("%s: %" PRIu64 " of %" PRIu64 " examples are longer than seq_len %" PRId32
               " tokens: each keeps its first %" PRId32 " (raise seq_len to keep them whole)\n",
               ds->what, ds->n_truncated, n_examples, seq_len, seq_len);
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

/* Global sequence n (wrapped by epoch): its shard, and in *j its index inside that shard. */
static int32_t locate_sequence(const vd_dataset *ds, uint64_t n, uint64_t *j) {
    vd_require(ds->n_seqs > 0);
    uint64_t m = n % ds->n_seqs;
    int32_t s = find_shard(ds, m);
    *j = m - ds->seq_start[s];
    return s;
}

static void die_bad_token(const vd_dataset *ds, int32_t s, uint64_t offset, uint32_t id) {
    vd_die("%s: %s: token id %" PRIu32 " at token offset %" PRIu64 " is >= the model's vocab size %" PRId32,
           ds->what, ds->paths[s], id, offset, ds->vocab_size);
}

/* Token i of shard s, checked against the model's vocab. Ids are checked here, lazily,
 * because scanning a multi-GB dataset at start-up costs minutes; an id past the embedding
 * table would otherwise read out of bounds. */
static inline int32_t checked_token(const vd_dataset *ds, int32_t s, uint64_t i) {
    uint32_t id = token_at(&ds->shards[s], i);
    if (id >= (uint32_t)ds->vocab_size) die_bad_token(ds, s, i, id);
    return (int32_t)id;
}

static inline int is_target(const vd_shard *sh, uint64_t i) { return !sh->flags || (sh->flags[i] & VD_TOKEN_TARGET); }

/* The examples [*e0, *e1) of local sequence j of an example shard. */
static void sequence_examples(const vd_shard *sh, uint64_t j, uint64_t *e0, uint64_t *e1) {
    if (sh->seq_ex) {
        *e0 = sh->seq_ex[j];
        *e1 = sh->seq_ex[j + 1];
    } else {
        *e0 = j;
        *e1 = j + 1;
    }
}

void vd_dataset_get(const vd_dataset *ds, uint64_t n, int32_t *inputs, int32_t *targets, int32_t *pos) {
    uint64_t j;
    int32_t s = locate_sequence(ds, n, &j);
    const vd_shard *sh = &ds->shards[s];
    uint64_t T = (uint64_t)ds->seq_len;
    if (!sh->examples) {
        /* a window of T+1 tokens: target t is token t+1, unless its flag says no loss */
        uint64_t offset = j * T;
        vd_require(offset + T < sh->n_tokens);
        int32_t prev = checked_token(ds, s, offset);
        for (uint64_t t = 0; t < T; t++) {
            int32_t next = checked_token(ds, s, offset + t + 1);
            inputs[t] = prev;
            targets[t] = is_target(sh, offset + t + 1) ? next : VD_TARGET_NONE;
            pos[t] = (int32_t)t;
            prev = next;
        }
        return;
    }
    /* Examples one after another: example e (truncated to L <= T tokens) gives inputs
     * e[0..L), targets e[1..L) where flagged, and no target at its last token. */
    uint64_t e0, e1, p = 0;
    sequence_examples(sh, j, &e0, &e1);
    int32_t last = 0;
    for (uint64_t e = e0; e < e1; e++) {
        uint64_t start = sh->ex_start[e], L = example_len(sh, e);
        if (L > T) L = T;
        vd_require(p + L <= T);
        for (uint64_t t = 0; t < L; t++) {
            inputs[p + t] = checked_token(ds, s, start + t);
            targets[p + t] = t + 1 < L && is_target(sh, start + t + 1) ? checked_token(ds, s, start + t + 1)
                                                                       : VD_TARGET_NONE;
            pos[p + t] = (int32_t)t; /* p = 0 when unpacked, so also pos = position in the sequence */
        }
        last = inputs[p + L - 1];
        p += L;
    }
    /* Padding: any valid id as input (the last token), no target. Unpacked, the positions go
     * on (t); packed, the pad run is its own segment (pos from 0), so no real query sees it
     * and it sees no example. */
    uint64_t pad0 = p;
    for (; p < T; p++) {
        inputs[p] = last;
        targets[p] = VD_TARGET_NONE;
        pos[p] = (int32_t)(ds->pack ? p - pad0 : p);
    }
}

uint32_t vd_dataset_target_count(const vd_dataset *ds, uint64_t n) {
    uint64_t j;
    int32_t s = locate_sequence(ds, n, &j);
    const vd_shard *sh = &ds->shards[s];
    uint64_t T = (uint64_t)ds->seq_len;
    if (!sh->flags) return (uint32_t)T;
    uint32_t count = 0;
    if (!sh->examples) {
        uint64_t offset = j * T;
        for (uint64_t t = 1; t <= T; t++) count += (sh->flags[offset + t] & VD_TOKEN_TARGET) != 0;
        return count;
    }
    uint64_t e0, e1;
    sequence_examples(sh, j, &e0, &e1);
    for (uint64_t e = e0; e < e1; e++) {
        uint64_t start = sh->ex_start[e], L = example_len(sh, e);
        if (L > T) L = T;
        for (uint64_t t = 1; t < L; t++) count += (sh->flags[start + t] & VD_TOKEN_TARGET) != 0;
    }
    return count;
}

void vd_dataset_validate_all(const vd_dataset *ds) { vd_dataset_validate_part(ds, 0, 1); }

void vd_dataset_validate_part(const vd_dataset *ds, int32_t part, int32_t parts) {
    /* Every token of every file, including tail tokens no sequence uses: an out-of-range id
     * anywhere means the shards were made with another tokenizer. */
    for (int32_t s = part; s < ds->n_shards; s += parts) {
        uint64_t n = ds->shards[s].n_tokens;
        for (uint64_t i = 0; i < n; i++) (void)checked_token(ds, s, i);
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
        if (ds->shards) {
            free(ds->shards[i].ex_start);
            free(ds->shards[i].seq_ex);
        }
    }
    free(ds->paths);
    free(ds->maps);
    free(ds->map_sizes);
    free(ds->shards);
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

int32_t vd_shard_token_bytes(int32_t vocab_size) { return vocab_size <= 65536 ? 2 : 4; }

void vd_shard_write_v2(const char *path, const vd_shard_data *s) {
    if (s->vocab_size < 1) vd_die("%s: vocab size %" PRId32 " (expected >= 1)", path, s->vocab_size);
    if (s->examples && !s->flags) vd_die("%s: a shard of examples needs per-token flags", path);
    int32_t width = vd_shard_token_bytes(s->vocab_size);
    uint64_t per_token = (uint64_t)width + (s->flags ? 1 : 0);
    uint64_t n = s->n_tokens;
    if (n > ((uint64_t)SIZE_MAX - HEADER_BYTES) / per_token)
        vd_die("%s: shard of %" PRIu64 " tokens is too large for memory", path, n);
    uint64_t bytes = HEADER_BYTES + n * per_token;
    /* the same checks the reader makes, so a shard written here always opens */
    for (uint64_t i = 0; i < n; i++) {
        if (s->tokens[i] < 0 || s->tokens[i] >= s->vocab_size)
            vd_die("%s: token %" PRIu64 " has id %" PRId32 ", outside the vocab [0, %" PRId32 ")", path, i, s->tokens[i],
                   s->vocab_size);
        if (s->flags && (s->flags[i] & ~(s->examples ? KNOWN_TOKEN_FLAGS : VD_TOKEN_TARGET)))
            vd_die("%s: token %" PRIu64 " has flag byte 0x%02x (allowed here: 0x%02x)", path, i, s->flags[i],
                   s->examples ? KNOWN_TOKEN_FLAGS : VD_TOKEN_TARGET);
    }
    if (s->examples && n > 0 && !(s->flags[0] & VD_TOKEN_EXAMPLE_START))
        vd_die("%s: the first token of a shard of examples must start an example", path);

    /* One buffer, one atomic write, as vd_shard_write. */
    uint8_t *buf = mallocCheck((size_t)bytes);
    uint8_t *p = buf + HEADER_BYTES;
    for (uint64_t i = 0; i < n; i++) {
        uint32_t id = (uint32_t)s->tokens[i];
        for (int32_t b = 0; b < width; b++) *p++ = (uint8_t)(id >> (8 * b)); /* little-endian */
    }
    if (s->flags && n > 0) memcpy(p, s->flags, (size_t)n);
    int32_t header[VD_SHARD_HEADER_INTS];
    memset(header, 0, sizeof(header));
    header[VD_SHARD_H_MAGIC] = VD_SHARD_MAGIC;
    header[VD_SHARD_H_VERSION] = VD_SHARD_VERSION_2;
    header_put_u64(header, VD_SHARD_H_COUNT, n);
    header[VD_SHARD_H_TOKEN_BYTES] = width;
    header[VD_SHARD_H_FLAGS] = (s->flags ? VD_SHARD_HAS_FLAGS : 0) | (s->examples ? VD_SHARD_EXAMPLES : 0);
    header[VD_SHARD_H_VOCAB] = s->vocab_size;
    header_put_u64(header, VD_SHARD_H_HASH, vd_hash64(buf + HEADER_BYTES, (size_t)(bytes - HEADER_BYTES), 0));
    memcpy(buf, header, sizeof(header));
    vd_write_file_atomic(path, buf, (size_t)bytes);
    free(buf);
}
