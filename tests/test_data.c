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
    write_raw(path, 20240520, 2, 10, 1024, 20);
    sfmt(c.pattern, sizeof(c.pattern), "%s", path);
    sfmt(needle, sizeof(needle), "%s: unsupported version 2 (expected 1", path);
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
    CHECK_DIES(run_prepare, &a, "prepare-data: --overwrite: expected no value, or 1, 0, true or false, got 'yes'");
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
    if (vd_test_failures == 0) remove_tree(g_dir); /* keep the files to look at when a check failed */
    else fprintf(stderr, "test files kept in %s\n", g_dir);
    TEST_END();
}
