/* test_data.c: token shards (data.c) and prepare-data (prepare_data.c).
 *
 * Shards are written into a fresh mkdtemp directory. The sequence mapping is checked against
 * an independent reference built by walking the shards in name order; every kind of bad
 * input must end the process with a one-line error that names the file. */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <glob.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <sys/stat.h>

#include "test_util.h"
#include "vera/cli.h"
#include "vera/common.h"
#include "vera/data.h"

static char g_dir[VD_PATH_MAX]; /* the temp root; each test works in its own subdirectory */

/* snprintf that treats truncation as a test bug instead of testing a cut-off path */
static void sfmt(char *out, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void sfmt(char *out, size_t cap, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, cap, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= cap) {
        fprintf(stderr, "test_data: path or message longer than %zu bytes (TMPDIR too long?)\n", cap);
        exit(1);
    }
}

static void make_subdir(char *out, const char *name) {
    sfmt(out, VD_PATH_MAX, "%s/%s", g_dir, name);
    vd_mkdir_p(out);
}

static void join(char *out, const char *dir, const char *name) { sfmt(out, VD_PATH_MAX, "%s/%s", dir, name); }

/* A shard whose token i is base + i (mod 256), so every token says where it came from. */
static void write_counting_shard(const char *path, uint64_t n, uint16_t base) {
    uint16_t *t = malloc((n ? n : 1) * sizeof(uint16_t));
    for (uint64_t i = 0; i < n; i++) t[i] = (uint16_t)((base + i) % 256);
    vd_shard_write(path, t, n);
    free(t);
}

/* Raw bytes: header ints h0..h2, then `payload` bytes of zeros, for hand-made bad files. */
static void write_raw(const char *path, int32_t magic, int32_t version, int32_t count, size_t header_bytes,
                      size_t payload) {
    size_t n = header_bytes + payload;
    char *buf = calloc(n ? n : 1, 1);
    int32_t h[3] = {magic, version, count};
    memcpy(buf, h, header_bytes < sizeof(h) ? header_bytes : sizeof(h));
    vd_write_file_atomic(path, buf, n);
    free(buf);
}

static uint64_t file_size(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? (uint64_t)st.st_size : UINT64_MAX;
}

/* ---------------------------------------------------------------------------------------- */

static void test_shard_write_layout(void) {
    char dir[VD_PATH_MAX], path[VD_PATH_MAX];
    make_subdir(dir, "layout");
    join(path, dir, "s.bin");
    uint16_t t[5] = {0, 1, 255, 256, 65535};
    vd_shard_write(path, t, 5);
    CHECK(file_size(path) == 1024 + 10, "size %" PRIu64, file_size(path));
    FILE *f = fopen(path, "rb");
    CHECK(f != NULL, "open %s", path);
    if (!f) return;
    int32_t h[256];
    uint16_t back[5];
    CHECK(fread(h, sizeof(int32_t), 256, f) == 256, "header read");
    CHECK(fread(back, sizeof(uint16_t), 5, f) == 5, "token read");
    fclose(f);
    CHECK(h[0] == 20240520 && h[1] == 1 && h[2] == 5, "header %d %d %d", h[0], h[1], h[2]);
    int zeros = 1;
    for (int i = 3; i < 256; i++) zeros &= h[i] == 0;
    CHECK(zeros, "header ints 3..255 are zero");
    CHECK(memcmp(back, t, sizeof(t)) == 0, "tokens round-trip");
}

/* Three shards of different lengths, written out of name order: with seq_len T = 4,
 *   a_0.bin  13 tokens = 3T+1 -> 3 sequences, no tail
 *   a_1.bin   4 tokens <  T+1 -> 0 sequences
 *   a_2.bin  10 tokens = 2T+2 -> 2 sequences, one unused tail token
 *   a_3.bin   5 tokens = T+1  -> 1 sequence
 *   a_4.bin   8 tokens = 2T   -> 1 sequence (the second would need a 9th token)
 * glob must order them by name; the reference below walks that order independently. */
#define T 4
static void test_mapping(void) {
    char dir[VD_PATH_MAX], path[VD_PATH_MAX], pattern[VD_PATH_MAX];
    make_subdir(dir, "map");
    enum { NS = 5, NSEQ = 7 };
    const char *names[NS] = {"a_0.bin", "a_1.bin", "a_2.bin", "a_3.bin", "a_4.bin"};
    const uint64_t lens[NS] = {13, 4, 10, 5, 8};
    const uint16_t bases[NS] = {0, 50, 100, 200, 150};
    const int write_order[NS] = {2, 4, 0, 3, 1};
    for (int k = 0; k < NS; k++) {
        int i = write_order[k];
        join(path, dir, names[i]);
        write_counting_shard(path, lens[i], bases[i]);
    }
    join(pattern, dir, "a_*.bin");
    vd_dataset ds;
    vd_dataset_open(&ds, pattern, T, 256, 0, "train_data");
    CHECK(ds.n_shards == NS, "n_shards %d", ds.n_shards);
    CHECK(ds.n_seqs == NSEQ, "n_seqs %" PRIu64, ds.n_seqs);
    CHECK(ds.seq_len == T && ds.vocab_size == 256, "seq_len/vocab");
    CHECK(strcmp(ds.what, "train_data") == 0, "what '%s'", ds.what);
    const uint64_t want_start[NS + 1] = {0, 3, 3, 5, 6, 7};
    for (int i = 0; i < NS && i < ds.n_shards; i++) {
        join(path, dir, names[i]);
        CHECK(strcmp(ds.paths[i], path) == 0, "shard %d is %s, want %s (glob order)", i, ds.paths[i], path);
        CHECK(ds.n_tokens[i] == lens[i], "shard %d n_tokens %" PRIu64, i, ds.n_tokens[i]);
    }
    for (int i = 0; i < NS + 1; i++)
        CHECK(ds.seq_start[i] == want_start[i], "seq_start[%d] = %" PRIu64 " want %" PRIu64, i, ds.seq_start[i],
              want_start[i]);

    /* reference: first token (base + offset) of each global sequence, in shard order */
    uint16_t ref_first[16];
    int nref = 0;
    for (int i = 0; i < NS; i++) {
        for (uint64_t off = 0; off + T < lens[i]; off += T) ref_first[nref++] = (uint16_t)(bases[i] + off);
    }
    CHECK(nref == NSEQ, "reference has %d sequences", nref);

    int32_t in[T], tg[T], pos[T];
    for (uint64_t n = 0; n < 3 * NSEQ + 2; n++) {
        vd_dataset_get(&ds, n, in, tg, pos);
        uint16_t first = ref_first[n % NSEQ];
        int ok = 1;
        for (int j = 0; j < T; j++) ok &= in[j] == first + j && tg[j] == first + j + 1;
        CHECK(ok, "sequence %" PRIu64 ": inputs start %d targets start %d, want %d / %d", n, in[0], tg[0], first,
              first + 1);
        CHECK(vd_dataset_epoch(&ds, n) == n / NSEQ, "epoch of %" PRIu64, n);
    }
    /* wrap at the far end of uint64: UINT64_MAX = 7 * 2635249153387078802 + 1 */
    vd_dataset_get(&ds, UINT64_MAX, in, tg, pos);
    CHECK(in[0] == ref_first[1] && tg[T - 1] == ref_first[1] + T, "UINT64_MAX wraps to sequence 1 (got %d)", in[0]);
    CHECK(vd_dataset_epoch(&ds, UINT64_MAX) == 2635249153387078802ULL, "epoch of UINT64_MAX");
    CHECK(vd_dataset_epoch(&ds, NSEQ - 1) == 0 && vd_dataset_epoch(&ds, NSEQ) == 1, "epoch boundary");

    vd_dataset_validate_all(&ds); /* all ids < 256: must return */
    vd_dataset_close(&ds);
    CHECK(ds.n_shards == 0 && ds.paths == NULL, "close clears the struct");

    /* a single-shard glob and a literal path (no wildcard) both work */
    join(path, dir, "a_2.bin");
    vd_dataset_open(&ds, path, T, 256, 0, "val_data");
    CHECK(ds.n_shards == 1 && ds.n_seqs == 2, "literal path: %d shards %" PRIu64 " seqs", ds.n_shards, ds.n_seqs);
    vd_dataset_get(&ds, 1, in, tg, pos);
    CHECK(in[0] == 104 && tg[T - 1] == 108, "literal path second sequence starts %d", in[0]);
    vd_dataset_close(&ds);
}

/* glob sorts by name, so shard_10 comes before shard_2 (as llm.c's zero-padded names avoid) */
static void test_glob_order(void) {
    char dir[VD_PATH_MAX], path[VD_PATH_MAX], pattern[VD_PATH_MAX];
    make_subdir(dir, "order");
    join(path, dir, "s_2.bin");
    write_counting_shard(path, 5, 20);
    join(path, dir, "s_10.bin");
    write_counting_shard(path, 5, 100);
    join(path, dir, "s_1.bin");
    write_counting_shard(path, 5, 10);
    join(pattern, dir, "s_*.bin");
    vd_dataset ds;
    vd_dataset_open(&ds, pattern, T, 256, 0, "train_data");
    int32_t in[T], tg[T], pos[T];
    const int32_t want[3] = {10, 100, 20}; /* s_1, s_10, s_2 */
    for (uint64_t n = 0; n < 3; n++) {
        vd_dataset_get(&ds, n, in, tg, pos);
        CHECK(in[0] == want[n], "glob order: sequence %" PRIu64 " starts %d want %d", n, in[0], want[n]);
    }
    vd_dataset_close(&ds);
}

/* ---------------------------------------------------------------------------------------- */
/* Bad input: each case runs in a child (CHECK_DIES) and must name the file in its error. */

typedef struct {
    char pattern[VD_PATH_MAX];
    int32_t seq_len, vocab;
    const char *what;
    uint64_t get_n; /* for die_get */
} open_case;

static void die_open(void *arg) {
    open_case *c = arg;
    vd_dataset ds;
    vd_dataset_open(&ds, c->pattern, c->seq_len, c->vocab, 0, c->what);
    vd_dataset_close(&ds);
}

/* the same with a deadline: a FIFO opened for reading would block the child for good */
static void die_open_in_5s(void *arg) {
    alarm(5);
    die_open(arg);
}

static void die_get(void *arg) {
    open_case *c = arg;
    vd_dataset ds;
    vd_dataset_open(&ds, c->pattern, c->seq_len, c->vocab, 0, c->what);
    int32_t in[64], tg[64], pos[64];
    vd_dataset_get(&ds, c->get_n, in, tg, pos);
    vd_dataset_close(&ds);
}

static void die_validate(void *arg) {
    open_case *c = arg;
    vd_dataset ds;
    vd_dataset_open(&ds, c->pattern, c->seq_len, c->vocab, 0, c->what);
    vd_dataset_validate_all(&ds);
    vd_dataset_close(&ds);
}

/* 1 if fn(arg) returns normally in a child (so a bad case that should pass does not end the test) */
static int survives(vd_test_fn fn, void *arg) {
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        FILE *quiet = freopen("/dev/null", "w", stderr); /* an expected error is not noise */
        (void)quiet;
        fn(arg);
        _exit(0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

static void test_bad_shards(void) {
    char dir[VD_PATH_MAX], path[VD_PATH_MAX], needle[2 * VD_PATH_MAX];
    make_subdir(dir, "bad");
    open_case c = {.seq_len = T, .vocab = 256, .what = "train_data"};

    /* no match */
    join(c.pattern, dir, "nothing_*.bin");
    sfmt(needle, sizeof(needle), "train_data: no files match '%s'", c.pattern);
    CHECK_DIES(die_open, &c, needle);
    c.what = "val_data";
    sfmt(needle, sizeof(needle), "val_data: no files match '%s'", c.pattern);
    CHECK_DIES(die_open, &c, needle);
    c.what = "train_data";

    /* shorter than the 1024-byte header, including an empty file */
    join(path, dir, "short_header.bin");
    write_raw(path, 20240520, 1, 0, 12, 0);
    sfmt(c.pattern, sizeof(c.pattern), "%s", path);
    sfmt(needle, sizeof(needle), "train_data: %s: truncated: 12 bytes", path);
    CHECK_DIES(die_open, &c, needle);
    join(path, dir, "empty.bin");
    write_raw(path, 0, 0, 0, 0, 0);
    sfmt(c.pattern, sizeof(c.pattern), "%s", path);
    sfmt(needle, sizeof(needle), "%s: truncated: 0 bytes", path);
    CHECK_DIES(die_open, &c, needle);

    /* wrong magic: e.g. a float32 file or another format */
    join(path, dir, "magic.bin");
    write_raw(path, 12345, 1, 10, 1024, 20);
    sfmt(c.pattern, sizeof(c.pattern), "%s", path);
    sfmt(needle, sizeof(needle), "%s: wrong magic 12345 (expected 20240520; is this an llm.c token shard?)", path);
    CHECK_DIES(die_open, &c, needle);

    /* wrong version */
    join(path, dir, "version.bin");
    write_raw(path, 20240520, 3, 10, 1024, 20);
    sfmt(c.pattern, sizeof(c.pattern), "%s", path);
    sfmt(needle, sizeof(needle), "%s: unsupported version 3 (expected 1", path);
    CHECK_DIES(die_open, &c, needle);

    /* header says more tokens than the file holds (an interrupted copy) */
    join(path, dir, "trunc_tokens.bin");
    write_raw(path, 20240520, 1, 100, 1024, 50 * 2);
    sfmt(c.pattern, sizeof(c.pattern), "%s", path);
    sfmt(needle, sizeof(needle), "%s: truncated: header says 100 tokens (1224 bytes), file has 1124 bytes", path);
    CHECK_DIES(die_open, &c, needle);

    /* and fewer (trailing bytes: not a file we understand) */
    join(path, dir, "long.bin");
    write_raw(path, 20240520, 1, 10, 1024, 10 * 2 + 1);
    sfmt(c.pattern, sizeof(c.pattern), "%s", path);
    sfmt(needle, sizeof(needle), "%s: too long: header says 10 tokens (1044 bytes), file has 1045 bytes", path);
    CHECK_DIES(die_open, &c, needle);

    /* negative count */
    join(path, dir, "negative.bin");
    write_raw(path, 20240520, 1, -5, 1024, 0);
    sfmt(c.pattern, sizeof(c.pattern), "%s", path);
    sfmt(needle, sizeof(needle), "%s: header token count -5 is negative", path);
    CHECK_DIES(die_open, &c, needle);

    /* a directory matching the glob */
    char sub[VD_PATH_MAX];
    join(sub, dir, "dir_shard.bin");
    vd_mkdir_p(sub);
    sfmt(c.pattern, sizeof(c.pattern), "%s", sub);
    sfmt(needle, sizeof(needle), "%s: not a regular file", sub);
    CHECK_DIES(die_open, &c, needle);

    /* one bad file among good ones is still caught, and named */
    char gdir[VD_PATH_MAX];
    make_subdir(gdir, "bad_mixed");
    join(path, gdir, "m_0.bin");
    write_counting_shard(path, 20, 0);
    join(path, gdir, "m_1.bin");
    write_raw(path, 20240520, 1, 30, 1024, 29 * 2);
    join(c.pattern, gdir, "m_*.bin");
    sfmt(needle, sizeof(needle), "train_data: %s: truncated: header says 30 tokens", path);
    CHECK_DIES(die_open, &c, needle);

    /* no shard long enough: 4 and 3 tokens, seq_len 4 needs 5 */
    char zdir[VD_PATH_MAX];
    make_subdir(zdir, "bad_zero");
    join(path, zdir, "z_0.bin");
    write_counting_shard(path, 4, 0);
    join(path, zdir, "z_1.bin");
    write_counting_shard(path, 3, 0);
    join(c.pattern, zdir, "z_*.bin");
    CHECK_DIES(die_open, &c, "train_data: no shard holds a full sequence of seq_len+1 = 5 tokens");
    c.seq_len = 3; /* 4 tokens = seq_len+1: now one sequence, no error */
    CHECK(survives(die_open, &c), "4 tokens hold one sequence of seq_len 3");
    c.seq_len = T;
}

static void test_bad_token(void) {
    char dir[VD_PATH_MAX], path[VD_PATH_MAX], needle[2 * VD_PATH_MAX];
    make_subdir(dir, "badtok");
    /* two shards; the second has id 300 as the *target* of its sequence 1 (token offset
     * 2T = 8), and id 256 in its unused tail (offset 13, past 3 sequences of T+1) */
    join(path, dir, "t_0.bin");
    write_counting_shard(path, 9, 0); /* 2 sequences: global 0, 1 */
    uint16_t t[14];
    for (int i = 0; i < 14; i++) t[i] = (uint16_t)i;
    t[8] = 300;
    t[13] = 256;
    char bad[VD_PATH_MAX];
    join(bad, dir, "t_1.bin");
    vd_shard_write(bad, t, 14); /* 3 sequences: global 2, 3, 4 */
    open_case c = {.seq_len = T, .vocab = 256, .what = "train_data"};
    join(c.pattern, dir, "t_*.bin");

    /* lazy: sequences that do not touch the bad id read fine */
    c.get_n = 1;
    CHECK(survives(die_get, &c), "sequence 1 (first shard) reads fine");
    c.get_n = 2;
    CHECK(survives(die_get, &c), "sequence 2 (tokens 0..4 of the bad shard) reads fine");
    c.get_n = 4; /* tokens 8..12: id 300 is its first input */
    CHECK(survives(die_get, &c) == 0, "sequence 4 holds id 300");
    /* sequence 3 = tokens 4..8: id 300 is only its last target */
    c.get_n = 3;
    sfmt(needle, sizeof(needle), "train_data: %s: token id 300 at token offset 8 is >= the model's vocab size 256", bad);
    CHECK_DIES(die_get, &c, needle);
    c.get_n = 3 + 5 * 1000; /* same sequence, a later epoch */
    CHECK_DIES(die_get, &c, needle);
    /* a larger vocab accepts 300 */
    c.vocab = 50257;
    c.get_n = 3;
    CHECK(survives(die_get, &c), "vocab 50257 accepts id 300");
    CHECK(survives(die_validate, &c), "vocab 50257 accepts every id");
    c.vocab = 301;
    CHECK(survives(die_get, &c), "vocab 301 accepts id 300");
    /* the full scan finds the id no matter which sequence is read */
    c.vocab = 257;
    sfmt(needle, sizeof(needle), "%s: token id 300 at token offset 8 is >= the model's vocab size 257", bad);
    CHECK_DIES(die_validate, &c, needle);
    c.vocab = 256;
    sfmt(needle, sizeof(needle), "%s: token id 300 at token offset 8 is >= the model's vocab size 256", bad);
    CHECK_DIES(die_validate, &c, needle);

    char tdir[VD_PATH_MAX];
    make_subdir(tdir, "badtail"); /* an id only in the unused tail: get never sees it, the scan does */
    for (int i = 0; i < 14; i++) t[i] = (uint16_t)i;
    t[13] = 256; /* only in the unused tail */
    join(bad, tdir, "u_0.bin");
    vd_shard_write(bad, t, 14);
    join(c.pattern, tdir, "u_*.bin");
    for (c.get_n = 0; c.get_n < 3; c.get_n++) CHECK(survives(die_get, &c), "tail id unused by sequence %" PRIu64, c.get_n);
    sfmt(needle, sizeof(needle), "%s: token id 256 at token offset 13 is >= the model's vocab size 256", bad);
    CHECK_DIES(die_validate, &c, needle);
}

/* ---------------------------------------------------------------------------------------- */
/* prepare-data */

typedef struct {
    int argc;
    char *argv[16];
} args;

static void set_args(args *a, const char *const *list) {
    a->argc = 0;
    for (; *list && a->argc < 15; list++) a->argv[a->argc++] = (char *)*list;
    a->argv[a->argc] = NULL;
}

static void run_prepare(void *arg) {
    args *a = arg;
    vd_prepare_data_main(a->argc, a->argv);
}

/* Reads a shard's tokens into out (cap entries) with plain stdio, independently of data.c;
 * returns the count, or -1 if the file is not a well-formed shard. */
static int64_t read_shard(const char *path, uint16_t *out, size_t cap) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    int32_t h[256];
    int64_t n = -1;
    if (fread(h, sizeof(int32_t), 256, f) == 256 && h[0] == 20240520 && h[1] == 1 && h[2] >= 0 &&
        (size_t)h[2] <= cap && fread(out, sizeof(uint16_t), (size_t)h[2], f) == (size_t)h[2] && fgetc(f) == EOF)
        n = h[2];
    fclose(f);
    return n;
}

static size_t count_matches(const char *pattern) {
    glob_t g;
    if (glob(pattern, 0, NULL, &g) != 0) return 0;
    size_t n = g.gl_pathc;
    globfree(&g);
    return n;
}

static void test_prepare_data(void) {
    char dir[VD_PATH_MAX], text[VD_PATH_MAX], out[VD_PATH_MAX], path[VD_PATH_MAX], pat[VD_PATH_MAX];
    char needle[2 * VD_PATH_MAX];
    make_subdir(dir, "prep");
    /* every byte value, so a signed-char conversion (bytes >= 128 -> negative ids) shows up */
    enum { N = 1000 };
    uint8_t bytes[N];
    uint32_t x = 12345;
    for (int i = 0; i < N; i++) {
        x = x * 1664525u + 1013904223u;
        bytes[i] = i < 256 ? (uint8_t)i : (uint8_t)(x >> 24);
    }
    join(text, dir, "input.txt");
    vd_write_file_atomic(text, bytes, N);
    join(out, dir, "shards");

    /* 1000 bytes, val 0.25 -> 250 val tokens; 750 train tokens in shards of 300, 300, 150 */
    args a;
    set_args(&a, (const char *[]){"vera-dist", "--in", text, "--out", out, "--val_fraction", "0.25", "--shard_tokens=300", NULL});
    CHECK(vd_prepare_data_main(a.argc, a.argv) == 0, "prepare-data returns 0");
    join(pat, out, "train_*.bin");
    CHECK(count_matches(pat) == 3, "3 train shards, got %zu", count_matches(pat));
    join(pat, out, "val_*.bin");
    CHECK(count_matches(pat) == 1, "1 val shard, got %zu", count_matches(pat));
    uint16_t tok[N];
    const size_t want_train[3] = {300, 300, 150};
    size_t at = 0;
    for (int s = 0; s < 3; s++) {
        sfmt(path, sizeof(path), "%s/train_%06d.bin", out, s);
        int64_t n = read_shard(path, tok, N);
        CHECK(n == (int64_t)want_train[s], "train shard %d has %" PRId64 " tokens", s, n);
        int same = n > 0;
        for (int64_t i = 0; i < n && at + (size_t)i < N; i++) same &= tok[i] == bytes[at + (size_t)i];
        CHECK(same, "train shard %d tokens are the input bytes", s);
        at += want_train[s];
    }
    join(path, out, "val_000000.bin");
    int64_t nv = read_shard(path, tok, N);
    CHECK(nv == 250, "val has %" PRId64 " tokens", nv);
    int same = nv == 250;
    for (int i = 0; i < 250 && same; i++) same &= tok[i] == bytes[750 + i];
    CHECK(same, "val tokens are the last 250 bytes");
    /* the trainer's view: byte tokens against a 256 vocab */
    vd_dataset ds;
    join(pat, out, "train_*.bin");
    vd_dataset_open(&ds, pat, 64, 256, 0, "train_data");
    vd_dataset_validate_all(&ds);
    CHECK(ds.n_seqs == 4 + 4 + 2, "train n_seqs %" PRIu64, ds.n_seqs);
    vd_dataset_close(&ds);

    /* a second run into the same directory refuses, and leaves the shards alone */
    CHECK_DIES(run_prepare, &a, "--out");
    CHECK_DIES(run_prepare, &a, "already holds token shards");
    join(pat, out, "train_*.bin");
    CHECK(count_matches(pat) == 3, "refused run kept 3 train shards");

    /* --overwrite with bigger shards and no val: stale train_000001/2 and val go away */
    set_args(&a, (const char *[]){"vera-dist", "--in", text, "--out", out, "--val_fraction=0", "--shard_tokens", "5000",
                                  "--overwrite", NULL});
    CHECK(vd_prepare_data_main(a.argc, a.argv) == 0, "--overwrite returns 0");
    join(pat, out, "train_*.bin");
    CHECK(count_matches(pat) == 1, "after --overwrite 1 train shard, got %zu", count_matches(pat));
    join(pat, out, "val_*.bin");
    CHECK(count_matches(pat) == 0, "after --overwrite with fraction 0, no val shard, got %zu", count_matches(pat));
    join(path, out, "train_000000.bin");
    int64_t n = read_shard(path, tok, N);
    CHECK(n == N, "all %d bytes in one shard, got %" PRId64, N, n);
    same = n == N;
    for (int i = 0; i < N && same; i++) same &= tok[i] == bytes[i];
    CHECK(same, "overwritten shard tokens are the input bytes");

    /* default fraction 0.1: floor(1000 * 0.1) = 100 val tokens, into a fresh directory */
    char out2[VD_PATH_MAX];
    join(out2, dir, "nested/defaults");
    set_args(&a, (const char *[]){"vera-dist", "--in", text, "--out", out2, NULL});
    CHECK(vd_prepare_data_main(a.argc, a.argv) == 0, "defaults return 0");
    join(path, out2, "val_000000.bin");
    CHECK(read_shard(path, tok, N) == 100, "default val_fraction 0.1 -> 100 val tokens");
    join(path, out2, "train_000000.bin");
    CHECK(read_shard(path, tok, N) == 900, "default -> 900 train tokens");

    /* --help returns 0 without doing anything */
    set_args(&a, (const char *[]){"vera-dist", "--help", NULL});
    CHECK(vd_prepare_data_main(a.argc, a.argv) == 0, "--help returns 0");

    /* errors name the option */
    char fresh[VD_PATH_MAX], empty[VD_PATH_MAX], missing[VD_PATH_MAX];
    join(fresh, dir, "fresh");
    join(empty, dir, "empty.txt");
    vd_write_file_atomic(empty, "", 0);
    join(missing, dir, "no_such_file.txt");
    set_args(&a, (const char *[]){"vera-dist", "--out", fresh, NULL});
    CHECK_DIES(run_prepare, &a, "--in is required");
    set_args(&a, (const char *[]){"vera-dist", "--in", text, NULL});
    CHECK_DIES(run_prepare, &a, "--out is required");
    set_args(&a, (const char *[]){"vera-dist", "--in", text, "--out", NULL});
    CHECK_DIES(run_prepare, &a, "--out needs a value");
    set_args(&a, (const char *[]){"vera-dist", "--in", missing, "--out", fresh, NULL});
    sfmt(needle, sizeof(needle), "--in: %s: cannot open", missing);
    CHECK_DIES(run_prepare, &a, needle);
    set_args(&a, (const char *[]){"vera-dist", "--in", empty, "--out", fresh, NULL});
    sfmt(needle, sizeof(needle), "--in: %s is empty", empty);
    CHECK_DIES(run_prepare, &a, needle);
    set_args(&a, (const char *[]){"vera-dist", "--in", dir, "--out", fresh, NULL});
    CHECK_DIES(run_prepare, &a, "not a regular file");
    const char *bad_fracs[] = {"0.95", "-0.1", "abc", "0.1x", "", "nan", NULL};
    for (const char **f = bad_fracs; *f; f++) {
        set_args(&a, (const char *[]){"vera-dist", "--in", text, "--out", fresh, "--val_fraction", *f, NULL});
        CHECK_DIES(run_prepare, &a, "--val_fraction");
    }
    const char *bad_tokens[] = {"0", "-1", "2147483648", "1e6", NULL};
    for (const char **f = bad_tokens; *f; f++) {
        set_args(&a, (const char *[]){"vera-dist", "--in", text, "--out", fresh, "--shard_tokens", *f, NULL});
        CHECK_DIES(run_prepare, &a, "--shard_tokens");
    }
    set_args(&a, (const char *[]){"vera-dist", "--in", text, "--out", fresh, "--shards", "3", NULL});
    CHECK_DIES(run_prepare, &a, "unknown option '--shards'");
    set_args(&a, (const char *[]){"vera-dist", "--in", text, "--out", fresh, "--overwrite=yes", NULL});
    CHECK_DIES(run_prepare, &a, "--overwrite takes no value");
    CHECK(!vd_path_exists(fresh), "failed runs wrote nothing to %s", fresh);
    /* one byte: val_fraction 0.9 floors to 0 val bytes, so the byte is train */
    char one[VD_PATH_MAX], out3[VD_PATH_MAX];
    join(one, dir, "one.txt");
    vd_write_file_atomic(one, "x", 1);
    join(out3, dir, "one");
    set_args(&a, (const char *[]){"vera-dist", "--in", one, "--out", out3, "--val_fraction", "0.9", NULL});
    CHECK(vd_prepare_data_main(a.argc, a.argv) == 0, "one-byte input");
    join(path, out3, "train_000000.bin");
    CHECK(read_shard(path, tok, N) == 1 && tok[0] == 'x', "one-byte input is one train token");
    /* 7 bytes, val_fraction 0.5: val gets floor(3.5) = 3 bytes, the tail "efg" */
    char seven[VD_PATH_MAX], out4[VD_PATH_MAX];
    join(seven, dir, "seven.txt");
    vd_write_file_atomic(seven, "abcdefg", 7);
    join(out4, dir, "seven");
    set_args(&a, (const char *[]){"vera-dist", "--in", seven, "--out", out4, "--val_fraction", "0.5", NULL});
    CHECK(vd_prepare_data_main(a.argc, a.argv) == 0, "seven-byte input");
    join(path, out4, "val_000000.bin");
    CHECK(read_shard(path, tok, N) == 3 && tok[0] == 'e' && tok[2] == 'g', "val is floor(7 * 0.5) = 3 bytes 'efg'");
    join(path, out4, "train_000000.bin");
    CHECK(read_shard(path, tok, N) == 4 && tok[0] == 'a' && tok[3] == 'd', "train is the first 4 bytes 'abcd'");
}

/* ---------------------------------------------------------------------------------------- */
/* v2 shards: uint16/uint32 tokens, flag bytes, examples, packing. */

/* The v2 file image built here from the documented layout, independently of data.c: the
 * writer's output must equal it byte for byte, and corrupt variants start from it. */
static uint8_t *v2_image(const int32_t *tok, const uint8_t *flags, uint64_t n, int32_t width, int32_t hflags,
                         int32_t vocab, size_t *size_out) {
    size_t per = (size_t)width + (flags ? 1 : 0);
    size_t size = 1024 + (size_t)n * per;
    uint8_t *buf = calloc(size, 1);
    int32_t h[256] = {0};
    h[0] = 20240520;
    h[1] = 2;
    h[2] = (int32_t)(uint32_t)(n & 0xffffffffu);
    h[3] = (int32_t)(uint32_t)(n >> 32);
    h[4] = width;
    h[5] = hflags;
    h[6] = vocab;
    uint8_t *p = buf + 1024;
    for (uint64_t i = 0; i < n; i++) {
        uint32_t v = (uint32_t)tok[i];
        for (int b = 0; b < width; b++) *p++ = (uint8_t)(v >> (8 * b));
    }
    if (flags) memcpy(p, flags, (size_t)n);
    uint64_t hash = vd_hash64(buf + 1024, size - 1024, 0);
    h[8] = (int32_t)(uint32_t)(hash & 0xffffffffu);
    h[9] = (int32_t)(uint32_t)(hash >> 32);
    memcpy(buf, h, sizeof(h));
    *size_out = size;
    return buf;
}

/* Recomputes the header's payload hash after a test edited the payload on purpose. */
static void v2_rehash(uint8_t *buf, size_t size) {
    uint64_t hash = vd_hash64(buf + 1024, size - 1024, 0);
    int32_t lo = (int32_t)(uint32_t)(hash & 0xffffffffu), hi = (int32_t)(uint32_t)(hash >> 32);
    memcpy(buf + 32, &lo, 4);
    memcpy(buf + 36, &hi, 4);
}

static int file_equals(const char *path, const uint8_t *want, size_t n) {
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    uint8_t *got = malloc(n + 1);
    size_t k = fread(got, 1, n + 1, f);
    fclose(f);
    int same = k == n && memcmp(got, want, n) == 0;
    free(got);
    return same;
}

static void test_v2_round_trip(void) {
    char dir[VD_PATH_MAX], path[VD_PATH_MAX];
    make_subdir(dir, "v2rt");
    enum { N = 300 };
    int32_t tok[N];
    uint8_t fl[N];
    const int32_t vocabs[3] = {50257, 65536, 128256}; /* uint16, uint16 (ids up to 65535), uint32 */
    const int32_t widths[3] = {2, 2, 4};
    for (int v = 0; v < 3; v++) {
        int32_t V = vocabs[v];
        for (int i = 0; i < N; i++) {
            tok[i] = i < 3 ? V - 1 - i : (int32_t)(((uint32_t)i * 2654435761u) % (uint32_t)V);
            fl[i] = (uint8_t)((i % 3 != 0) ? VD_TOKEN_TARGET : 0);
        }
        CHECK(vd_shard_token_bytes(V) == widths[v], "vocab %d -> width %d", V, vd_shard_token_bytes(V));
        for (int with_flags = 0; with_flags < 2; with_flags++) {
            sfmt(path, sizeof(path), "%s/rt_%d_%d.bin", dir, V, with_flags);
            vd_shard_data sd = {.tokens = tok, .flags = with_flags ? fl : NULL, .n_tokens = N, .vocab_size = V};
            vd_shard_write_v2(path, &sd);
            size_t size;
            uint8_t *want = v2_image(tok, with_flags ? fl : NULL, N, widths[v], with_flags ? 1 : 0, V, &size);
            CHECK(file_equals(path, want, size), "v2 vocab %d flags %d: file equals the documented layout", V,
                  with_flags);
            free(want);
            /* read back: T = 7 gives floor(299 / 7) = 42 windows */
            vd_dataset ds;
            vd_dataset_open(&ds, path, 7, V, 0, "train_data");
            CHECK(ds.n_seqs == 42, "v2 n_seqs %" PRIu64, ds.n_seqs);
            CHECK(ds.shards[0].token_bytes == widths[v] && ds.shards[0].version == 2 &&
                      ds.shards[0].tokenizer_vocab == V, "v2 header fields");
            int32_t in[7], tg[7], pos[7];
            int ok = 1, count_ok = 1;
            for (uint64_t n = 0; n < 42; n++) {
                vd_dataset_get(&ds, n, in, tg, pos);
                uint32_t count = 0;
                for (int t = 0; t < 7; t++) {
                    size_t i = (size_t)n * 7 + (size_t)t;
                    int32_t want_tg = (!with_flags || fl[i + 1]) ? tok[i + 1] : VD_TARGET_NONE;
                    ok &= in[t] == tok[i] && tg[t] == want_tg && pos[t] == t;
                    count += want_tg != VD_TARGET_NONE;
                }
                count_ok &= vd_dataset_target_count(&ds, n) == count;
            }
            CHECK(ok, "v2 vocab %d flags %d: inputs / masked targets / pos", V, with_flags);
            CHECK(count_ok, "v2 vocab %d flags %d: target_count", V, with_flags);
            vd_dataset_validate_all(&ds);
            vd_dataset_close(&ds);
        }
    }
    /* v1 and v2 shards in one glob: both read, in name order */
    char mdir[VD_PATH_MAX], pat[VD_PATH_MAX];
    make_subdir(mdir, "v2mixed");
    join(path, mdir, "m_0.bin");
    write_counting_shard(path, 9, 0);
    for (int i = 0; i < 9; i++) tok[i] = 100 + i;
    join(path, mdir, "m_1.bin");
    vd_shard_data sd = {.tokens = tok, .n_tokens = 9, .vocab_size = 256};
    vd_shard_write_v2(path, &sd);
    join(pat, mdir, "m_*.bin");
    vd_dataset ds;
    vd_dataset_open(&ds, pat, 4, 256, 0, "train_data");
    int32_t in[4], tg[4], pos[4];
    CHECK(ds.n_seqs == 4, "mixed n_seqs %" PRIu64, ds.n_seqs);
    vd_dataset_get(&ds, 2, in, tg, pos);
    CHECK(in[0] == 100 && tg[3] == 104 && vd_dataset_target_count(&ds, 2) == 4, "mixed: sequence 2 is the v2 shard's");
    vd_dataset_get(&ds, 1, in, tg, pos);
    CHECK(in[0] == 4 && tg[3] == 8, "mixed: sequence 1 is the v1 shard's");
    vd_dataset_close(&ds);
}

/* The worked example of docs/data-format.md ("Examples"), seq_len 6:
 *   A = 10 11 12 13                 flags S . T T   (11 is prompt: no loss on it)
 *   B = 20 21                       flags S T
 *   C = 30 31 32 33 34 35 36 37     flags S . . T T T T T   (8 > 6: cut to 30..35)
 *   D = 40 41                       flags S T
 *   E = 50 51 52                    flags S T .
 * in two shards: x_0 = A B C, x_1 = D E. */
#define N_ VD_TARGET_NONE
static const int32_t ex_tok0[14] = {10, 11, 12, 13, 20, 21, 30, 31, 32, 33, 34, 35, 36, 37};
static const uint8_t ex_fl0[14] = {2, 0, 1, 1, 2, 1, 2, 0, 0, 1, 1, 1, 1, 1};
static const int32_t ex_tok1[5] = {40, 41, 50, 51, 52};
static const uint8_t ex_fl1[5] = {2, 1, 2, 1, 0};
static const int32_t want_unpacked[5][3][6] = {
    {{10, 11, 12, 13, 13, 13}, {N_, 12, 13, N_, N_, N_}, {0, 1, 2, 3, 4, 5}},
    {{20, 21, 21, 21, 21, 21}, {21, N_, N_, N_, N_, N_}, {0, 1, 2, 3, 4, 5}},
    {{30, 31, 32, 33, 34, 35}, {N_, N_, 33, 34, 35, N_}, {0, 1, 2, 3, 4, 5}},
    {{40, 41, 41, 41, 41, 41}, {41, N_, N_, N_, N_, N_}, {0, 1, 2, 3, 4, 5}},
    {{50, 51, 52, 52, 52, 52}, {51, N_, N_, N_, N_, N_}, {0, 1, 2, 3, 4, 5}},
};
static const int32_t want_packed[3][3][6] = {
    {{10, 11, 12, 13, 20, 21}, {N_, 12, 13, N_, 21, N_}, {0, 1, 2, 3, 0, 1}},
    {{30, 31, 32, 33, 34, 35}, {N_, N_, 33, 34, 35, N_}, {0, 1, 2, 3, 4, 5}},
    {{40, 41, 50, 51, 52, 52}, {41, N_, 51, N_, N_, N_}, {0, 1, 0, 1, 2, 0}},
};
#undef N_

/* (context, target) pairs of a sequence: the context of position t is inputs[t - pos[t] .. t],
 * what attention lets query t see. Written as "c0 c1 ... -> target" strings into out. */
static int collect_pairs(const int32_t *in, const int32_t *tg, const int32_t *pos, int n, char out[][64], int at) {
    for (int t = 0; t < n; t++) {
        if (tg[t] == VD_TARGET_NONE) continue;
        char *s = out[at++];
        int k = 0;
        for (int u = t - pos[t]; u <= t; u++) k += snprintf(s + k, (size_t)(64 - k), "%d ", in[u]);
        snprintf(s + k, (size_t)(64 - k), "-> %d", tg[t]);
    }
    return at;
}

static int cmp_str(const void *a, const void *b) { return strcmp(a, b); }

static void write_example_shards(const char *dir) {
    char path[VD_PATH_MAX];
    join(path, dir, "x_0.bin");
    vd_shard_data a = {.tokens = ex_tok0, .flags = ex_fl0, .n_tokens = 14, .vocab_size = 100, .examples = 1};
    vd_shard_write_v2(path, &a);
    join(path, dir, "x_1.bin");
    vd_shard_data b = {.tokens = ex_tok1, .flags = ex_fl1, .n_tokens = 5, .vocab_size = 100, .examples = 1};
    vd_shard_write_v2(path, &b);
}

static void test_examples(void) {
    char dir[VD_PATH_MAX], pat[VD_PATH_MAX];
    make_subdir(dir, "examples");
    write_example_shards(dir);
    join(pat, dir, "x_*.bin");
    char pairs[2][32][64];
    int n_pairs[2] = {0, 0};
    for (int pack = 0; pack < 2; pack++) {
        vd_dataset ds;
        vd_dataset_open(&ds, pat, 6, 128, pack, "train_data");
        uint64_t want_n = pack ? 3 : 5;
        CHECK(ds.n_seqs == want_n, "pack %d: n_seqs %" PRIu64 " want %" PRIu64, pack, ds.n_seqs, want_n);
        CHECK(ds.n_truncated == 1, "pack %d: one truncated example (C), got %" PRIu64, pack, ds.n_truncated);
        CHECK(ds.shards[0].n_examples == 3 && ds.shards[1].n_examples == 2, "example index");
        for (uint64_t n = 0; n < want_n * 2; n++) { /* a second epoch reads the same */
            int32_t in[6], tg[6], pos[6];
            vd_dataset_get(&ds, n, in, tg, pos);
            const int32_t(*w)[6] = pack ? want_packed[n % want_n] : want_unpacked[n % want_n];
            int ok = memcmp(in, w[0], sizeof(in)) == 0 && memcmp(tg, w[1], sizeof(tg)) == 0 &&
                     memcmp(pos, w[2], sizeof(pos)) == 0;
            CHECK(ok, "pack %d sequence %" PRIu64 ": in %d %d %d %d %d %d tg %d %d %d %d %d %d pos %d %d %d %d %d %d",
                  pack, n, in[0], in[1], in[2], in[3], in[4], in[5], tg[0], tg[1], tg[2], tg[3], tg[4], tg[5], pos[0],
                  pos[1], pos[2], pos[3], pos[4], pos[5]);
            uint32_t count = 0;
            for (int t = 0; t < 6; t++) count += tg[t] != VD_TARGET_NONE;
            CHECK(vd_dataset_target_count(&ds, n) == count, "pack %d sequence %" PRIu64 ": target_count %u want %u",
                  pack, n, vd_dataset_target_count(&ds, n), count);
            if (n < want_n) n_pairs[pack] = collect_pairs(in, tg, pos, 6, pairs[pack], n_pairs[pack]);
        }
        vd_dataset_close(&ds);
    }
    /* packing changes where examples sit, never what a target is predicted from */
    CHECK(n_pairs[0] == 8 && n_pairs[1] == 8, "8 targets either way (%d, %d)", n_pairs[0], n_pairs[1]);
    qsort(pairs[0], (size_t)n_pairs[0], 64, cmp_str);
    qsort(pairs[1], (size_t)n_pairs[1], 64, cmp_str);
    int same = n_pairs[0] == n_pairs[1];
    for (int i = 0; same && i < n_pairs[0]; i++) same = strcmp(pairs[0][i], pairs[1][i]) == 0;
    CHECK(same, "packed and unpacked give the same (context, target) pairs");

    /* seq_len 2: every example is cut to 2 tokens and each fills a sequence, so packing
     * packs nothing; seq_len 100: all of a shard's examples share one sequence */
    vd_dataset ds;
    vd_dataset_open(&ds, pat, 2, 128, 1, "train_data");
    CHECK(ds.n_seqs == 5 && ds.n_truncated == 3, "seq_len 2: 5 sequences, 3 truncated (%" PRIu64 ", %" PRIu64 ")",
          ds.n_seqs, ds.n_truncated);
    int32_t in[100], tg[100], pos[100];
    vd_dataset_get(&ds, 0, in, tg, pos);
    CHECK(in[0] == 10 && in[1] == 11 && tg[0] == VD_TARGET_NONE && tg[1] == VD_TARGET_NONE && pos[1] == 1,
          "seq_len 2: A cut to 10 11, no target (11 is prompt, 12 cut off)");
    vd_dataset_close(&ds);
    vd_dataset_open(&ds, pat, 100, 128, 1, "train_data");
    CHECK(ds.n_seqs == 2 && ds.n_truncated == 0, "seq_len 100: one sequence per shard");
    vd_dataset_get(&ds, 1, in, tg, pos);
    CHECK(in[0] == 40 && in[2] == 50 && in[4] == 52 && in[5] == 52 && pos[4] == 2 && pos[5] == 0 && pos[99] == 94 &&
              tg[0] == 41 && tg[2] == 51 && tg[5] == VD_TARGET_NONE && vd_dataset_target_count(&ds, 1) == 2,
          "seq_len 100: D E then a 95-token pad run");
    vd_dataset_close(&ds);
}

static void die_write_v2(void *arg) {
    const vd_shard_data *sd = arg;
    char path[VD_PATH_MAX];
    join(path, g_dir, "never_written.bin");
    vd_shard_write_v2(path, sd);
}

/* Each corrupt variant of a good v2 file is refused at open with a line naming the file. */
static void test_v2_bad(void) {
    char dir[VD_PATH_MAX], path[VD_PATH_MAX], needle[2 * VD_PATH_MAX];
    make_subdir(dir, "v2bad");
    open_case c = {.seq_len = 6, .vocab = 100, .what = "train_data"};
    size_t size;
    int k = 0;
    /* writes buf to a fresh file, points c at it, expects death with "PATH: msg" */
#define EXPECT_REFUSED(buf_, size_, msg_)                                   \
    do {                                                                    \
        sfmt(path, sizeof(path), "%s/bad_%02d.bin", dir, k++);              \
        vd_write_file_atomic(path, (buf_), (size_));                        \
        sfmt(c.pattern, sizeof(c.pattern), "%s", path);                     \
        sfmt(needle, sizeof(needle), "train_data: %s: %s", path, (msg_));   \
        CHECK_DIES(die_open, &c, needle);                                   \
    } while (0)
    uint8_t *good = v2_image(ex_tok0, ex_fl0, 14, 2, 3, 100, &size);
    uint8_t *b = malloc(size + 8);
    int32_t v;

    memcpy(b, good, size);
    sfmt(path, sizeof(path), "%s/good.bin", dir);
    vd_write_file_atomic(path, b, size);
    sfmt(c.pattern, sizeof(c.pattern), "%s", path);
    CHECK(survives(die_open, &c), "the unmodified image opens");

    memcpy(b, good, size);
    v = 3;
    memcpy(b + 16, &v, 4); /* width */
    EXPECT_REFUSED(b, size, "token width 3 bytes (expected 2 for uint16 or 4 for uint32)");
    memcpy(b, good, size);
    v = 7;
    memcpy(b + 20, &v, 4); /* header flags */
    EXPECT_REFUSED(b, size, "header flags 0x7 have unknown bits");
    memcpy(b, good, size);
    v = 2;
    memcpy(b + 20, &v, 4); /* examples without the flag array */
    EXPECT_REFUSED(b, size, "header says it holds examples but has no per-token flag array");
    memcpy(b, good, size);
    v = 101;
    memcpy(b + 24, &v, 4); /* tokenizer vocab above the model's */
    EXPECT_REFUSED(b, size, "made with a tokenizer of 101 tokens, more than the model's vocab size 100");
    memcpy(b, good, size);
    v = 0;
    memcpy(b + 24, &v, 4);
    EXPECT_REFUSED(b, size, "header vocab size 0 (expected >= 1)");
    memcpy(b, good, size);
    v = 5;
    memcpy(b + 4 * 200, &v, 4); /* a reserved slot */
    EXPECT_REFUSED(b, size, "reserved header int 200 is 5 (expected 0");
    memcpy(b, good, size);
    v = 15;
    memcpy(b + 8, &v, 4); /* count 15 for 14 tokens */
    EXPECT_REFUSED(b, size, "truncated: header says 15 tokens (1069 bytes), file has 1066 bytes");
    memcpy(b, good, size);
    b[size] = 0;
    EXPECT_REFUSED(b, size + 1, "too long: header says 14 tokens (1066 bytes), file has 1067 bytes");
    memcpy(b, good, size);
    v = 1;
    memcpy(b + 12, &v, 4); /* count's high word: 2^32 + 14 tokens */
    EXPECT_REFUSED(b, size, "truncated: header says 4294967310 tokens");
    memcpy(b, good, size);
    b[1024 + 5] ^= 0x40; /* one flipped bit in a token */
    EXPECT_REFUSED(b, size, "payload hash");
    memcpy(b, good, size);
    b[size - 1] ^= 1; /* and in a flag byte */
    EXPECT_REFUSED(b, size, "payload hash");
    memcpy(b, good, size);
    b[1024 + 28 + 3] = 0x81; /* unknown flag bits on token 3 */
    v2_rehash(b, size);
    EXPECT_REFUSED(b, size, "flag byte 0x81 of token 3 has unknown bits");
    memcpy(b, good, size);
    b[1024 + 28 + 0] = 1; /* token 0 does not start an example */
    v2_rehash(b, size);
    EXPECT_REFUSED(b, size, "the first token does not start an example");
    free(good);
    /* an example-start flag in a shard that is not one of examples */
    good = v2_image(ex_tok0, ex_fl0, 14, 2, 1, 100, &size);
    EXPECT_REFUSED(good, size, "token 0 is flagged as an example start, but the header does not say");
    free(good);
    /* id 150 >= the model's 100 in a shard whose header claims vocab 100: refused when read */
    int32_t tok[14];
    memcpy(tok, ex_tok0, sizeof(tok));
    tok[9] = 150;
    good = v2_image(tok, ex_fl0, 14, 4, 3, 100, &size);
    sfmt(path, sizeof(path), "%s/bad_id.bin", dir);
    vd_write_file_atomic(path, good, size);
    free(good);
    sfmt(c.pattern, sizeof(c.pattern), "%s", path);
    c.get_n = 0;
    CHECK(survives(die_get, &c), "example A does not touch the bad id");
    c.get_n = 2; /* example C holds it */
    sfmt(needle, sizeof(needle), "train_data: %s: token id 150 at token offset 9 is >= the model's vocab size 100", path);
    CHECK_DIES(die_get, &c, needle);
    c.get_n = 0;
    CHECK_DIES(die_validate, &c, needle);
    free(b);
#undef EXPECT_REFUSED

    /* the writer refuses what the reader would */
    int32_t bad_tok[2] = {5, 100};
    uint8_t bad_fl[2] = {2, 4};
    vd_shard_data sd = {.tokens = bad_tok, .n_tokens = 2, .vocab_size = 100};
    CHECK_DIES(die_write_v2, &sd, "token 1 has id 100, outside the vocab [0, 100)");
    bad_tok[1] = 6;
    sd.flags = bad_fl;
    sd.examples = 1;
    CHECK_DIES(die_write_v2, &sd, "token 1 has flag byte 0x04");
    bad_fl[1] = 0;
    bad_fl[0] = 1;
    CHECK_DIES(die_write_v2, &sd, "the first token of a shard of examples must start an example");
    join(path, g_dir, "never_written.bin");
    CHECK(!vd_path_exists(path), "refused writes leave no file");
}

/* Removes the temp tree (two levels deep is all the tests create, plus nested/defaults). */
static void remove_tree(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0) return;
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        if (d) {
            struct dirent *e;
            while ((e = readdir(d)) != NULL) {
                if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
                char sub[VD_PATH_MAX];
                sfmt(sub, sizeof(sub), "%s/%s", path, e->d_name);
                remove_tree(sub);
            }
            closedir(d);
        }
        rmdir(path);
    } else {
        unlink(path);
    }
}

/* A FIFO or directory matched by the glob is refused before it is opened, naming it (open()
 * of a FIFO blocks until a writer comes: every rank hung). */
static void test_special_files(void) {
    char dir[VD_PATH_MAX], path[VD_PATH_MAX], needle[2 * VD_PATH_MAX];
    make_subdir(dir, "special");
    open_case c = {.seq_len = T, .vocab = 256, .what = "train_data"};
    join(path, dir, "train_000.bin");
    if (mkfifo(path, 0644) != 0) { perror(path); exit(1); }
    join(c.pattern, dir, "train_*.bin");
    sfmt(needle, sizeof(needle), "train_data: %s: not a regular file (it is a FIFO", path);
    CHECK_DIES(die_open_in_5s, &c, needle);
    unlink(path);
    if (mkdir(path, 0755) != 0) { perror(path); exit(1); }
    sfmt(needle, sizeof(needle), "train_data: %s: not a regular file (it is a directory", path);
    CHECK_DIES(die_open_in_5s, &c, needle);
    rmdir(path);
}

int main(void) {
    const char *tmp = getenv("TMPDIR");
    sfmt(g_dir, sizeof(g_dir), "%s/vera_test_data_XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_shard_write_layout();
    test_mapping();
    test_glob_order();
    test_bad_shards();
    test_special_files();
    test_bad_token();
    test_prepare_data();
    test_v2_round_trip();
    test_examples();
    test_v2_bad();
    if (vd_test_failures == 0) remove_tree(g_dir); /* keep the files to look at when a check failed */
    else fprintf(stderr, "test files kept in %s\n", g_dir);
    TEST_END();
}
