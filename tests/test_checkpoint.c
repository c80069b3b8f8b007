/* test_checkpoint.c: HDF5 checkpoints (src/io/checkpoint.c, docs/checkpoint-format.md).
 *  - round trip, bit-exact, with and without the projections;
 *  - vd_checkpoint_path / list / prune: naming, ordering, keep_last, stale temporaries;
 *  - no temporary file after a successful write; a write failure dies naming the path;
 *  - corruption: a byte flipped at many offsets, truncation at many lengths, garbage, empty
 *    and foreign HDF5 files: every read returns -1 with a reason naming the file, or (a flip
 *    in bytes nothing reads) succeeds with data identical to what was written;
 *  - targeted damage through the HDF5 API (wrong shape, wrong type, missing object, changed
 *    value, changed attribute): -1 naming the object;
 *  - refused reads print nothing on stderr, not even at exit (no HDF5 stack dump, no
 *    "infinite loop closing library");
 *  - a writer SIGKILLed mid-file leaves only its temporary: the final name is absent, or is
 *    still the previous intact checkpoint. */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <sys/stat.h>
#include <time.h>

#include <hdf5.h>

#include "test_util.h"
#include "vera/checkpoint.h"
#include "vera/common.h"

/* Sanitizer build: HDF5 1.10.8 itself leaks a few hundred bytes (free-list blocks) each time
 * it rejects a metadata block with a bad checksum, which the corruption tests do hundreds of
 * times. Those allocations are made inside libhdf5 and nothing outside it can free them, so
 * leaks allocated from libhdf5 frames are suppressed; a leak of our own allocations still fails
 * the test, and HDF5 objects we forget to close are caught by count_open_objects(). */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void) { return "leak:libhdf5\n"; }
const char *__lsan_default_options(void);
const char *__lsan_default_options(void) { return "print_suppressions=0"; }

/* ----------------------------------------------------------------------------------------- */
/* a checkpoint built by hand */

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;
static uint64_t rng_u64(void) { /* xorshift64* */
    g_rng ^= g_rng >> 12; g_rng ^= g_rng << 25; g_rng ^= g_rng >> 27;
    return g_rng * 2685821657736338717ull;
}
static float rng_f(void) { return (float)((double)(rng_u64() >> 40) / 16777216.0 * 2.0 - 1.0); }

static const char *const k_kind_path[4] = {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"};
#define C_EMBD 8
#define R_RANK 4
#define N_LAYER 2

/* 2-layer model, n_embd 8, r 4, targets attn.c_attn (out 3C), mlp.c_fc (out 4C) and
 * mlp.c_proj (in 4C, out C): 6 modules with three different lengths; random everything. */
static void make_ck(vd_checkpoint *ck, int with_proj) {
    memset(ck, 0, sizeof(*ck));
    char text[8192];
    size_t len = 0;
    /* a long, realistic configuration text (the serializer's "key = value" lines) */
    for (int i = 0; i < 150; i++)
        len += (size_t)snprintf(text + len, sizeof(text) - len, "key_%03d = value %llu\n", i, (unsigned long long)(rng_u64() % 100000));
    ck->config_text = mallocCheck(len + 1);
    memcpy(ck->config_text, text, len + 1);
    ck->config_hash = vd_hash64(ck->config_text, len, 0);
    ck->model = (vd_gpt2_config){.max_seq_len = 16, .vocab_size = 64, .n_layer = N_LAYER, .n_head = 2,
                                 .channels = C_EMBD, .ln_eps = 1e-5f};
    ck->model_fingerprint = rng_u64();
    ck->r = R_RANK;
    ck->max_in = 4 * C_EMBD;
    ck->max_out = 4 * C_EMBD;
    ck->projection_prng_key = rng_u64();
    snprintf(ck->target_modules, sizeof(ck->target_modules), "attn.c_attn,mlp.c_fc,mlp.c_proj");
    ck->step = 20 + (int64_t)(rng_u64() % 1000);
    ck->tokens_seen = rng_u64();
    ck->next_sequence = rng_u64();
    ck->global_batch_seqs = 1 + rng_u64() % 64;
    ck->world_size = 3;
    ck->dropout_seed = rng_u64();
    ck->adam_t = (int32_t)ck->step;
    ck->last_loss = rng_f() + 3.0f;

    const int kinds[3] = {0, 2, 3};
    const int32_t outs[4] = {3 * C_EMBD, C_EMBD, 4 * C_EMBD, C_EMBD};
    ck->modules = callocCheck(N_LAYER * 3, sizeof(vd_ckpt_module));
    size_t off = 0;
    for (int l = 0; l < N_LAYER; l++)
        for (int k = 0; k < 3; k++) {
            vd_ckpt_module *md = &ck->modules[ck->n_modules++];
            snprintf(md->name, sizeof(md->name), "transformer.h.%d.%s", l, k_kind_path[kinds[k]]);
            md->out = outs[kinds[k]];
            md->off_b = off;
            md->off_d = off + (size_t)md->out;
            off += (size_t)md->out + R_RANK;
        }
    ck->n_trainable = off;
    ck->params = mallocCheck(sizeof(float) * off);
    ck->exp_avg = mallocCheck(sizeof(float) * off);
    ck->exp_avg_sq = mallocCheck(sizeof(float) * off);
    for (size_t i = 0; i < off; i++) {
        ck->params[i] = rng_f();
        ck->exp_avg[i] = 1e-3f * rng_f();
        ck->exp_avg_sq[i] = 1e-6f * (rng_f() + 1.0f);
    }
    size_t na = (size_t)ck->r * ck->max_in, nbm = (size_t)ck->max_out * ck->r;
    float *A = mallocCheck(sizeof(float) * na), *B = mallocCheck(sizeof(float) * nbm);
    for (size_t i = 0; i < na; i++) A[i] = rng_f();
    for (size_t i = 0; i < nbm; i++) B[i] = rng_f();
    /* as the trainer computes vd_vera.proj_checksum, whether or not A and B are stored */
    ck->projection_checksum = vd_hash64(B, sizeof(float) * nbm, vd_hash64(A, sizeof(float) * na, 0));
    if (with_proj) { ck->A = A; ck->B = B; }
    else { free(A); free(B); }
}

/* 1 if a and b hold the same checkpoint, bit for bit; else 0 with the first difference in why. */
static int ck_equal(const vd_checkpoint *a, const vd_checkpoint *b, char *why, size_t cap) {
#define DIFF(cond, name) do { if (cond) { snprintf(why, cap, "%s differs", name); return 0; } } while (0)
    DIFF(!a->config_text || !b->config_text || strcmp(a->config_text, b->config_text), "config_text");
    DIFF(a->config_hash != b->config_hash, "config_hash");
    DIFF(a->model.max_seq_len != b->model.max_seq_len || a->model.vocab_size != b->model.vocab_size ||
         a->model.n_layer != b->model.n_layer || a->model.n_head != b->model.n_head ||
         a->model.channels != b->model.channels || memcmp(&a->model.ln_eps, &b->model.ln_eps, 4), "model");
    DIFF(a->model_fingerprint != b->model_fingerprint, "model_fingerprint");
    DIFF(a->r != b->r || a->max_in != b->max_in || a->max_out != b->max_out, "r/max_in/max_out");
    DIFF(a->projection_prng_key != b->projection_prng_key, "projection_prng_key");
    DIFF(strcmp(a->target_modules, b->target_modules), "target_modules");
    DIFF(a->projection_checksum != b->projection_checksum, "projection_checksum");
    DIFF(a->step != b->step, "step");
    DIFF(a->tokens_seen != b->tokens_seen, "tokens_seen");
    DIFF(a->next_sequence != b->next_sequence, "next_sequence");
    DIFF(a->global_batch_seqs != b->global_batch_seqs, "global_batch_seqs");
    DIFF(a->world_size != b->world_size, "world_size");
    DIFF(a->dropout_seed != b->dropout_seed, "dropout_seed");
    DIFF(a->adam_t != b->adam_t, "adam_t");
    DIFF(memcmp(&a->last_loss, &b->last_loss, 4), "last_loss");
    DIFF(a->n_modules != b->n_modules, "n_modules");
    for (int32_t i = 0; i < a->n_modules; i++) {
        DIFF(strcmp(a->modules[i].name, b->modules[i].name), "module name");
        DIFF(a->modules[i].out != b->modules[i].out || a->modules[i].off_b != b->modules[i].off_b ||
             a->modules[i].off_d != b->modules[i].off_d, "module layout");
    }
    DIFF(a->n_trainable != b->n_trainable, "n_trainable");
    size_t nb = sizeof(float) * a->n_trainable;
    DIFF(memcmp(a->params, b->params, nb), "params");
    DIFF(memcmp(a->exp_avg, b->exp_avg, nb), "exp_avg");
    DIFF(memcmp(a->exp_avg_sq, b->exp_avg_sq, nb), "exp_avg_sq");
    DIFF((a->A == NULL) != (b->A == NULL) || (a->B == NULL) != (b->B == NULL), "presence of A/B");
    if (a->A) {
        DIFF(memcmp(a->A, b->A, sizeof(float) * (size_t)a->r * a->max_in), "A");
        DIFF(memcmp(a->B, b->B, sizeof(float) * (size_t)a->max_out * a->r), "B");
    }
#undef DIFF
    return 1;
}

static int ck_is_zeroed(const vd_checkpoint *ck) {
    static const vd_checkpoint zero;
    return memcmp(ck, &zero, sizeof(zero)) == 0;
}

/* ----------------------------------------------------------------------------------------- */
/* file helpers */

static char g_dir[256];

static unsigned char *slurp(const char *path, size_t *n) {
    FILE *f = fopenCheck(path, "rb");
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = mallocCheck((size_t)len);
    freadCheck(buf, 1, (size_t)len, f, path);
    fclose(f);
    *n = (size_t)len;
    return buf;
}

static void spit(const char *path, const void *buf, size_t n) {
    FILE *f = fopenCheck(path, "wb");
    fwriteCheck(buf, 1, n, f, path);
    fcloseCheck(f, path);
}

static void copy_file(const char *src, const char *dst) {
    size_t n;
    unsigned char *b = slurp(src, &n);
    spit(dst, b, n);
    free(b);
}

static int exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

/* Number of entries in dir whose name contains ".tmp." */
static int count_tmp(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) n += strstr(de->d_name, ".tmp.") != NULL;
    closedir(d);
    return n;
}

static void set_mtime(const char *path, time_t t) {
    struct timespec ts[2] = {{t, 0}, {t, 0}};
    if (utimensat(AT_FDCWD, path, ts, 0) != 0) { perror("utimensat"); exit(2); }
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Expects a failed read whose one-line reason names the file and contains `needle`. */
static void expect_refused(const char *path, const char *needle, const char *what) {
    vd_checkpoint ck;
    char err[1024] = "untouched";
    int rc = vd_checkpoint_read(path, &ck, err, sizeof(err));
    CHECK(rc == -1, "%s: read returned %d, expected -1", what, rc);
    if (rc == 0) { vd_checkpoint_free(&ck); return; }
    CHECK(err[0] && strstr(err, path) == err, "%s: reason does not start with the path: '%s'", what, err);
    CHECK(strchr(err, '\n') == NULL, "%s: reason is not one line: '%s'", what, err);
    CHECK(!needle || strstr(err, needle), "%s: reason '%s' does not mention '%s'", what, err, needle);
    CHECK(ck_is_zeroed(&ck), "%s: a failed read left allocations in ck", what);
    printf("  refused (%s): %s\n", what, err);
}

/* ----------------------------------------------------------------------------------------- */
/* HDF5 surgery on a copy of a good file */

static hid_t open_rw(const char *path) {
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    if (f < 0) { fprintf(stderr, "test setup: cannot open %s read-write\n", path); exit(2); }
    return f;
}

#define H5OK(call) do { if ((call) < 0) { fprintf(stderr, "test setup: %s failed at %s:%d\n", #call, __FILE__, __LINE__); exit(2); } } while (0)

/* Replaces dataset `name` by one of type `type` and shape dims (zero-filled). */
static void replace_dataset(const char *path, const char *name, hid_t type, int rank, const hsize_t *dims) {
    hid_t f = open_rw(path);
    H5OK(H5Ldelete(f, name, H5P_DEFAULT));
    hid_t sp = H5Screate_simple(rank, dims, NULL);
    hid_t d = H5Dcreate2(f, name, type, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5OK(d);
    H5OK(H5Dclose(d));
    H5OK(H5Sclose(sp));
    H5OK(H5Fclose(f));
}

static void delete_object(const char *path, const char *name) {
    hid_t f = open_rw(path);
    H5OK(H5Ldelete(f, name, H5P_DEFAULT));
    H5OK(H5Fclose(f));
}

/* Adds `delta` to element 0 of a float32 dataset (same shape, same type). */
static void nudge_dataset(const char *path, const char *name, float delta) {
    hid_t f = open_rw(path);
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
    H5OK(d);
    hid_t sp = H5Dget_space(d);
    hssize_t n = H5Sget_simple_extent_npoints(sp);
    float *buf = mallocCheck(sizeof(float) * (size_t)n);
    H5OK(H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf));
    buf[0] += delta;
    H5OK(H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf));
    free(buf);
    H5OK(H5Sclose(sp));
    H5OK(H5Dclose(d));
    H5OK(H5Fclose(f));
}

/* Replaces attribute `attr` of object `obj` by a scalar of file type ftype holding *v. */
static void set_attr(const char *path, const char *obj, const char *attr, hid_t ftype, hid_t mtype, const void *v) {
    hid_t f = open_rw(path);
    hid_t o = H5Oopen(f, obj, H5P_DEFAULT);
    H5OK(o);
    if (H5Aexists(o, attr) > 0) H5OK(H5Adelete(o, attr));
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(o, attr, ftype, sp, H5P_DEFAULT, H5P_DEFAULT);
    H5OK(a);
    H5OK(H5Awrite(a, mtype, v));
    H5OK(H5Aclose(a));
    H5OK(H5Sclose(sp));
    H5OK(H5Oclose(o));
    H5OK(H5Fclose(f));
}

static void set_attr_str(const char *path, const char *obj, const char *attr, const char *s) {
    hid_t t = H5Tcopy(H5T_C_S1);
    H5OK(H5Tset_size(t, strlen(s) + 1));
    set_attr(path, obj, attr, t, t, s);
    H5OK(H5Tclose(t));
}

static void delete_attr(const char *path, const char *obj, const char *attr) {
    hid_t f = open_rw(path);
    hid_t o = H5Oopen(f, obj, H5P_DEFAULT);
    H5OK(o);
    H5OK(H5Adelete(o, attr));
    H5OK(H5Oclose(o));
    H5OK(H5Fclose(f));
}

/* Swaps the first two entries of /adapter's module_order. */
static void swap_module_order(const char *path) {
    hid_t f = open_rw(path);
    hid_t g = H5Gopen2(f, "adapter", H5P_DEFAULT);
    hid_t a = H5Aopen(g, "module_order", H5P_DEFAULT);
    H5OK(a);
    hid_t t = H5Aget_type(a), sp = H5Aget_space(a);
    size_t size = H5Tget_size(t);
    hssize_t n = H5Sget_simple_extent_npoints(sp);
    char *buf = callocCheck((size_t)n, size);
    char *tmp = mallocCheck(size);
    H5OK(H5Aread(a, t, buf));
    memcpy(tmp, buf, size);
    memcpy(buf, buf + size, size);
    memcpy(buf + size, tmp, size);
    H5OK(H5Awrite(a, t, buf));
    free(buf);
    free(tmp);
    H5OK(H5Tclose(t));
    H5OK(H5Sclose(sp));
    H5OK(H5Aclose(a));
    H5OK(H5Gclose(g));
    H5OK(H5Fclose(f));
}

/* ----------------------------------------------------------------------------------------- */

static void test_round_trip(int with_proj) {
    printf("round trip %s projections\n", with_proj ? "with" : "without");
    vd_checkpoint ck, back;
    make_ck(&ck, with_proj);
    char path[512], tmp[600], why[128];
    snprintf(path, sizeof(path), "%s/rt%d/checkpoints/step_00000020.h5", g_dir, with_proj);
    vd_checkpoint_write(path, &ck, 0); /* also creates the checkpoints directory */
    snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());
    CHECK(exists(path), "%s not written", path);
    CHECK(!exists(tmp), "temporary %s remains after a successful write", tmp);
    char dir[512];
    snprintf(dir, sizeof(dir), "%s/rt%d/checkpoints", g_dir, with_proj);
    CHECK(count_tmp(dir) == 0, "a temporary file remains in %s", dir);

    char err[1024] = "";
    int rc = vd_checkpoint_read(path, &back, err, sizeof(err));
    CHECK(rc == 0, "read failed: %s", err);
    if (rc == 0) {
        CHECK(ck_equal(&ck, &back, why, sizeof(why)), "read back differs: %s", why);
        CHECK((back.A != NULL) == with_proj && (back.B != NULL) == with_proj, "A/B presence");
        CHECK(vd_checkpoint_data_checksum(&back) == vd_checkpoint_data_checksum(&ck), "data checksum");
        vd_checkpoint_free(&back);
        CHECK(ck_is_zeroed(&back), "vd_checkpoint_free does not zero the struct");
    }
    /* overwriting an existing checkpoint (a rerun of the same step) replaces it atomically */
    ck.last_loss += 1.0f;
    vd_checkpoint_write(path, &ck, 0);
    rc = vd_checkpoint_read(path, &back, err, sizeof(err));
    CHECK(rc == 0 && ck_equal(&ck, &back, why, sizeof(why)), "rewrite: %s %s", err, rc == 0 ? why : "");
    if (rc == 0) vd_checkpoint_free(&back);
    vd_checkpoint_free(&ck);
}

static void test_checksum_sensitivity(void) {
    printf("data checksum covers every field\n");
    vd_checkpoint ck;
    make_ck(&ck, 0);
    uint64_t h0 = vd_checkpoint_data_checksum(&ck);
    int changed = 0, tried = 0;
    /* each change is undone by restoring the saved values, not by an inverse operation
     * (x + 1 - 1 need not be x in float) */
    const vd_checkpoint saved = ck;
    const float p_last = ck.params[ck.n_trainable - 1], m0 = ck.exp_avg[0], v7 = ck.exp_avg_sq[7];
#define TRY(stmt) do { \
        stmt; \
        tried++; \
        if (vd_checkpoint_data_checksum(&ck) != h0) changed++; \
        else fprintf(stderr, "  not covered: %s\n", #stmt); \
        ck = saved; \
        ck.params[ck.n_trainable - 1] = p_last; ck.exp_avg[0] = m0; ck.exp_avg_sq[7] = v7; \
    } while (0)
    TRY(ck.step++);
    TRY(ck.tokens_seen++);
    TRY(ck.next_sequence++);
    TRY(ck.global_batch_seqs++);
    TRY(ck.adam_t++);
    TRY(ck.world_size++);
    TRY(ck.dropout_seed++);
    TRY(ck.last_loss += 1.0f);
    TRY(ck.config_hash++);
    TRY(ck.model_fingerprint++);
    TRY(ck.model.n_layer++);
    TRY(ck.model.n_head++);
    TRY(ck.model.channels++);
    TRY(ck.model.vocab_size++);
    TRY(ck.model.max_seq_len++);
    TRY(ck.model.ln_eps *= 2);
    TRY(ck.r++);
    TRY(ck.max_in++);
    TRY(ck.max_out++);
    TRY(ck.projection_prng_key++);
    TRY(ck.projection_checksum++);
    TRY(ck.target_modules[0] = 'X');
    TRY(ck.params[ck.n_trainable - 1] += 1);
    TRY(ck.exp_avg[0] += 1);
    TRY(ck.exp_avg_sq[7] += 1);
#undef TRY
    CHECK(changed == tried, "%d of %d changes leave the data checksum unchanged", tried - changed, tried);
    CHECK(vd_checkpoint_data_checksum(&ck) == h0, "undo");
    vd_checkpoint_free(&ck);
}

static void test_list_prune(void) {
    printf("path, list, prune\n");
    char out[512], path[600], cdir[600], p[700];
    snprintf(out, sizeof(out), "%s/runs", g_dir);
    char **paths = (char **)1;
    CHECK(vd_checkpoint_list(out, &paths) == 0, "list of a missing directory is not empty");
    vd_checkpoint_list_free(paths, 0);

    vd_checkpoint_path("out", 20, path, sizeof(path));
    CHECK(strcmp(path, "out/checkpoints/step_00000020.h5") == 0, "vd_checkpoint_path: %s", path);
    vd_checkpoint_path("o", 123456789, path, sizeof(path));
    CHECK(strcmp(path, "o/checkpoints/step_123456789.h5") == 0, "vd_checkpoint_path 9 digits: %s", path);

    vd_checkpoint ck;
    make_ck(&ck, 0);
    const int64_t steps[5] = {3, 1, 123456789, 20, 7};
    for (int i = 0; i < 5; i++) {
        ck.step = steps[i];
        vd_checkpoint_path(out, steps[i], path, sizeof(path));
        vd_checkpoint_write(path, &ck, 0);
    }
    vd_checkpoint_free(&ck);
    snprintf(cdir, sizeof(cdir), "%s/checkpoints", out);
    /* look-alikes that are not checkpoints, and temporaries */
    const char *junk[] = {"step_1.h5", "step_00000005.h5.bak", "notes.txt", "step_0000000x.h5",
                          "step_00000004.h5.tmp.abc", "xstep_00000006.h5"};
    for (size_t i = 0; i < sizeof(junk) / sizeof(junk[0]); i++) {
        snprintf(p, sizeof(p), "%s/%s", cdir, junk[i]);
        spit(p, "x", 1);
    }
    time_t now = time(NULL);
    char stale[700], fresh[700];
    snprintf(stale, sizeof(stale), "%s/step_00000004.h5.tmp.4242", cdir);
    spit(stale, "partial", 7);
    set_mtime(stale, now - 3600);   /* abandoned before the newest checkpoint */
    snprintf(fresh, sizeof(fresh), "%s/step_00000300.h5.tmp.4243", cdir);
    spit(fresh, "partial", 7);
    set_mtime(fresh, now + 3600);   /* a writer that may still be at work */

    int32_t n = vd_checkpoint_list(out, &paths);
    const int64_t want[5] = {123456789, 20, 7, 3, 1};
    CHECK(n == 5, "list found %d checkpoints, expected 5", (int)n);
    for (int i = 0; i < n && i < 5; i++) {
        vd_checkpoint_path(out, want[i], path, sizeof(path));
        CHECK(strcmp(paths[i], path) == 0, "list[%d] = %s, expected %s", i, paths[i], path);
    }
    vd_checkpoint_list_free(paths, n);

    vd_checkpoint_prune(out, 3);
    n = vd_checkpoint_list(out, &paths);
    CHECK(n == 3, "after prune(3) %d checkpoints remain", (int)n);
    for (int i = 0; i < n && i < 3; i++) {
        vd_checkpoint_path(out, want[i], path, sizeof(path));
        CHECK(strcmp(paths[i], path) == 0, "after prune list[%d] = %s, expected %s", i, paths[i], path);
    }
    vd_checkpoint_list_free(paths, n);
    for (int i = 3; i < 5; i++) {
        vd_checkpoint_path(out, want[i], path, sizeof(path));
        CHECK(!exists(path), "prune kept %s", path);
    }
    CHECK(!exists(stale), "prune kept the stale temporary %s", stale);
    CHECK(exists(fresh), "prune removed the temporary %s, newer than the newest checkpoint", fresh);
    for (size_t i = 0; i < sizeof(junk) / sizeof(junk[0]); i++) {
        snprintf(p, sizeof(p), "%s/%s", cdir, junk[i]);
        CHECK(exists(p), "prune removed %s, which is not a checkpoint", p);
    }
    /* the survivors are intact */
    vd_checkpoint_path(out, 7, path, sizeof(path));
    vd_checkpoint back;
    char err[1024];
    CHECK(vd_checkpoint_read(path, &back, err, sizeof(err)) == 0 && back.step == 7, "survivor: %s", err);
    vd_checkpoint_free(&back);
    /* keep_last 0 is treated as 1: the newest is never deleted */
    vd_checkpoint_prune(out, 0);
    n = vd_checkpoint_list(out, &paths);
    CHECK(n == 1, "prune(0) left %d checkpoints, expected 1", (int)n);
    vd_checkpoint_list_free(paths, n);
}

/* --- corruption --- */

static int g_flip_detected, g_flip_harmless;

static void check_damaged(const char *path, const vd_checkpoint *orig, const char *what) {
    vd_checkpoint got;
    char err[1024] = "";
    char why[128];
    int rc = vd_checkpoint_read(path, &got, err, sizeof(err));
    if (rc == -1) {
        g_flip_detected++;
        CHECK(err[0] && strstr(err, path) == err && !strchr(err, '\n'), "%s: bad reason '%s'", what, err);
        CHECK(ck_is_zeroed(&got), "%s: failed read left allocations", what);
    } else {
        g_flip_harmless++;
        CHECK(rc == 0, "%s: read returned %d", what, rc);
        CHECK(ck_equal(orig, &got, why, sizeof(why)), "%s: read succeeded with DIFFERENT data (%s)", what, why);
        vd_checkpoint_free(&got);
    }
}

static void test_corruption(void) {
    printf("corruption: flipped bytes, truncation, garbage\n");
    vd_checkpoint ck;
    make_ck(&ck, 1);
    char good[512], bad[512];
    snprintf(good, sizeof(good), "%s/corrupt/checkpoints/step_00000020.h5", g_dir);
    snprintf(bad, sizeof(bad), "%s/corrupt/checkpoints/damaged.h5", g_dir);
    vd_checkpoint_write(good, &ck, 0);
    size_t n;
    unsigned char *orig = slurp(good, &n);
    unsigned char *buf = mallocCheck(n + 4096);

    /* one flipped byte at a time (all bits, then a single bit 48 bytes further on) */
    g_flip_detected = g_flip_harmless = 0;
    int cases = 0;
    for (size_t o = 0; o < n; o += 97) {
        for (int variant = 0; variant < 2; variant++) {
            size_t at = o + (variant ? 48 : 0);
            if (at >= n) continue;
            memcpy(buf, orig, n);
            buf[at] ^= variant ? 0x01 : 0xFF;
            spit(bad, buf, n);
            char what[64];
            snprintf(what, sizeof(what), "byte %zu ^ 0x%02x", at, variant ? 0x01 : 0xFF);
            check_damaged(bad, &ck, what);
            cases++;
        }
    }
    printf("  %d flips over %zu bytes: %d refused, %d harmless (identical data)\n", cases, n,
           g_flip_detected, g_flip_harmless);
    CHECK(g_flip_detected > cases / 2, "only %d of %d flips were detected", g_flip_detected, cases);
    /* flips in the data region: one per array element group, all must be refused */
    int data_flips = 0, data_refused = 0;
    for (size_t o = n / 2; o < n; o += 997) {
        memcpy(buf, orig, n);
        buf[o] ^= 0x10;
        spit(bad, buf, n);
        int before = g_flip_detected;
        check_damaged(bad, &ck, "data-region flip");
        data_flips++;
        data_refused += g_flip_detected > before;
    }
    printf("  %d flips in the second half: %d refused\n", data_flips, data_refused);

    /* truncation */
    const size_t cuts[] = {0, 1, 7, 8, 47, 96, 200, 512, 1024, n / 4, n / 3, n / 2, 2 * n / 3, 3 * n / 4,
                           n - 4096, n - 1000, n - 100, n - 8, n - 1};
    for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
        if (cuts[i] >= n) continue;
        spit(bad, orig, cuts[i]);
        char what[64];
        snprintf(what, sizeof(what), "truncated to %zu of %zu bytes", cuts[i], n);
        expect_refused(bad, NULL, what);
    }
    /* bytes appended: HDF5 ignores what lies past its end of file; either outcome is fine as
     * long as a successful read returns the original */
    memcpy(buf, orig, n);
    memset(buf + n, 0xAB, 4096);
    spit(bad, buf, n + 4096);
    check_damaged(bad, &ck, "4096 bytes appended");

    /* garbage, empty, text, missing, a directory */
    for (size_t i = 0; i < n; i++) buf[i] = (unsigned char)rng_u64();
    spit(bad, buf, n);
    expect_refused(bad, "not an HDF5 file", "random bytes");
    spit(bad, "", 0);
    expect_refused(bad, NULL, "empty file");
    spit(bad, "model = x\n", 10);
    expect_refused(bad, "not an HDF5 file", "text file");
    /* the HDF5 signature followed by garbage */
    memcpy(buf, orig, 8);
    spit(bad, buf, n);
    expect_refused(bad, NULL, "signature then garbage");
    char missing[600];
    snprintf(missing, sizeof(missing), "%s/corrupt/checkpoints/nope.h5", g_dir);
    expect_refused(missing, "No such file", "missing file");
    snprintf(missing, sizeof(missing), "%s/corrupt/checkpoints", g_dir);
    expect_refused(missing, "not a regular file", "a directory");

    free(buf);
    free(orig);
    vd_checkpoint_free(&ck);
}

static void test_surgery(void) {
    printf("targeted damage through the HDF5 API\n");
    vd_checkpoint ck;
    make_ck(&ck, 1);
    char good[512], bad[512], goodnp[512];
    snprintf(good, sizeof(good), "%s/surgery/good.h5", g_dir);
    snprintf(goodnp, sizeof(goodnp), "%s/surgery/good_noproj.h5", g_dir);
    snprintf(bad, sizeof(bad), "%s/surgery/bad.h5", g_dir);
    vd_checkpoint_write(good, &ck, 0);
    vd_checkpoint ck_np;
    make_ck(&ck_np, 0);
    vd_checkpoint_write(goodnp, &ck_np, 0);
    vd_checkpoint_free(&ck_np);
    const int32_t r = ck.r, max_in = ck.max_in;

    /* wrong length: c_attn's lambda_b is 3C = 24 long */
    copy_file(good, bad);
    hsize_t d1[1] = {12};
    replace_dataset(bad, "/adapter/transformer.h.0.attn.c_attn/lambda_b", H5T_IEEE_F32LE, 1, d1);
    expect_refused(bad, "/adapter/transformer.h.0.attn.c_attn/lambda_b has 12 elements, expected 24", "short lambda_b");

    copy_file(good, bad);
    hsize_t d2[1] = {(hsize_t)r + 1};
    replace_dataset(bad, "/optimizer/exp_avg/transformer.h.1.mlp.c_fc/lambda_d", H5T_IEEE_F32LE, 1, d2);
    expect_refused(bad, "/optimizer/exp_avg/transformer.h.1.mlp.c_fc/lambda_d has 5 elements, expected 4", "long lambda_d");

    /* wrong type: integers where float32 belongs; float64 too */
    copy_file(good, bad);
    hsize_t d3[1] = {(hsize_t)r};
    replace_dataset(bad, "/optimizer/exp_avg_sq/transformer.h.1.mlp.c_proj/lambda_d", H5T_STD_I32LE, 1, d3);
    expect_refused(bad, "/optimizer/exp_avg_sq/transformer.h.1.mlp.c_proj/lambda_d is not float32", "int32 dataset");
    copy_file(good, bad);
    hsize_t d4[1] = {4 * C_EMBD};
    replace_dataset(bad, "/adapter/transformer.h.0.mlp.c_fc/lambda_b", H5T_IEEE_F64LE, 1, d4);
    expect_refused(bad, "/adapter/transformer.h.0.mlp.c_fc/lambda_b is not float32", "float64 dataset");

    /* wrong rank / shape of the projections */
    copy_file(good, bad);
    hsize_t d5[2] = {(hsize_t)r, (hsize_t)max_in - 1};
    replace_dataset(bad, "/projection/A", H5T_IEEE_F32LE, 2, d5);
    expect_refused(bad, "/projection/A has shape [4, 31], expected [4, 32]", "A shape");
    copy_file(good, bad);
    hsize_t d6[1] = {(hsize_t)ck.max_out * (hsize_t)r};
    replace_dataset(bad, "/projection/B", H5T_IEEE_F32LE, 1, d6);
    expect_refused(bad, "/projection/B has 1 dimensions, expected 2", "B flattened");

    /* missing objects */
    copy_file(good, bad);
    delete_object(bad, "/optimizer/exp_avg/transformer.h.1.mlp.c_fc/lambda_b");
    expect_refused(bad, "dataset /optimizer/exp_avg/transformer.h.1.mlp.c_fc/lambda_b is missing", "missing dataset");
    copy_file(good, bad);
    delete_object(bad, "/adapter/transformer.h.1.attn.c_attn");
    expect_refused(bad, "group /adapter/transformer.h.1.attn.c_attn is missing", "missing module group");
    copy_file(good, bad);
    delete_object(bad, "/optimizer");
    expect_refused(bad, "group /optimizer is missing", "missing group");
    copy_file(good, bad);
    delete_object(bad, "/projection");
    expect_refused(bad, "group /projection is missing", "save_projection 1 without /projection");
    copy_file(good, bad);
    delete_object(bad, "/config");
    expect_refused(bad, "dataset /config is missing", "missing /config");
    copy_file(good, bad);
    delete_attr(bad, "/config", "hash");
    expect_refused(bad, "/config has no attribute 'hash'", "missing /config hash");
    copy_file(good, bad);
    delete_attr(bad, "/", "next_sequence");
    expect_refused(bad, "/ has no attribute 'next_sequence'", "missing root attribute");
    copy_file(good, bad);
    delete_attr(bad, "/model", "fingerprint");
    expect_refused(bad, "/model has no attribute 'fingerprint'", "missing /model attribute");

    /* same shape, changed values: only the checksums can tell */
    copy_file(good, bad);
    nudge_dataset(bad, "/adapter/transformer.h.1.mlp.c_proj/lambda_d", 0.5f);
    expect_refused(bad, "data_checksum mismatch", "changed lambda_d value");
    copy_file(good, bad);
    nudge_dataset(bad, "/optimizer/exp_avg_sq/transformer.h.0.attn.c_attn/lambda_b", 1e-3f);
    expect_refused(bad, "data_checksum mismatch", "changed moment value");
    copy_file(good, bad);
    nudge_dataset(bad, "/projection/B", 0.25f);
    expect_refused(bad, "projection_checksum", "changed B value");

    /* changed attributes */
    int64_t step = ck.step + 1;
    copy_file(good, bad);
    set_attr(bad, "/", "step", H5T_STD_I64LE, H5T_NATIVE_INT64, &step);
    expect_refused(bad, "data_checksum mismatch", "changed step");
    float loss = ck.last_loss * 2;
    copy_file(good, bad);
    set_attr(bad, "/", "last_loss", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, &loss);
    expect_refused(bad, "data_checksum mismatch", "changed last_loss");
    uint64_t key = ck.projection_prng_key ^ 1;
    copy_file(good, bad);
    set_attr(bad, "/vera", "projection_prng_key", H5T_STD_U64LE, H5T_NATIVE_UINT64, &key);
    expect_refused(bad, "data_checksum mismatch", "changed projection key");
    int32_t step32 = (int32_t)ck.step;
    copy_file(good, bad);
    set_attr(bad, "/", "step", H5T_STD_I32LE, H5T_NATIVE_INT32, &step32);
    expect_refused(bad, "attribute step of / is not int64", "step stored as int32");
    int32_t version = 2;
    copy_file(good, bad);
    set_attr(bad, "/", "format_version", H5T_STD_I32LE, H5T_NATIVE_INT32, &version);
    expect_refused(bad, "format_version 2 is not supported", "format_version 2");
    copy_file(good, bad);
    set_attr_str(bad, "/", "format", "some-other-format");
    expect_refused(bad, "not a vera-dist checkpoint", "other format");
    int32_t embd = 2 * C_EMBD;
    copy_file(good, bad);
    set_attr(bad, "/model", "n_embd", H5T_STD_I32LE, H5T_NATIVE_INT32, &embd);
    expect_refused(bad, "max_in", "n_embd doubled");
    int32_t layers = 3;
    copy_file(good, bad);
    set_attr(bad, "/model", "n_layer", H5T_STD_I32LE, H5T_NATIVE_INT32, &layers);
    expect_refused(bad, "module_order of /adapter lists 6 modules", "n_layer 3");
    int32_t huge = 1 << 19;
    copy_file(good, bad);
    set_attr(bad, "/model", "n_embd", H5T_STD_I32LE, H5T_NATIVE_INT32, &huge);
    int32_t mi = 4 * huge;
    set_attr(bad, "/vera", "max_in", H5T_STD_I32LE, H5T_NATIVE_INT32, &mi);
    set_attr(bad, "/vera", "max_out", H5T_STD_I32LE, H5T_NATIVE_INT32, &mi);
    expect_refused(bad, "too small", "huge n_embd (no huge allocation)");
    copy_file(good, bad);
    set_attr_str(bad, "/vera", "target_modules", "all");
    expect_refused(bad, "module_order of /adapter lists 6 modules; n_layer 2 and target_modules 'all' give 8", "targets all");
    copy_file(good, bad);
    set_attr_str(bad, "/vera", "target_modules", "attn.c_attn,bogus");
    expect_refused(bad, "not a valid target list", "bogus targets");
    copy_file(good, bad);
    swap_module_order(bad);
    expect_refused(bad, "module_order of /adapter[0] is 'transformer.h.0.mlp.c_fc', expected 'transformer.h.0.attn.c_attn'", "module order swapped");
    int32_t zero = 0;
    copy_file(good, bad);
    set_attr(bad, "/vera", "save_projection", H5T_STD_I32LE, H5T_NATIVE_INT32, &zero);
    expect_refused(bad, "/projection is present but /vera save_projection is 0", "save_projection 0 with /projection");
    int32_t seven = 7;
    copy_file(goodnp, bad);
    set_attr(bad, "/vera", "save_projection", H5T_STD_I32LE, H5T_NATIVE_INT32, &seven);
    expect_refused(bad, "save_projection of /vera is 7", "save_projection 7");

    /* the text of /config no longer matching its hash */
    copy_file(good, bad);
    {
        hid_t f = open_rw(bad);
        H5OK(H5Ldelete(f, "config", H5P_DEFAULT));
        const char *text = "r = 5\n";
        hid_t t = H5Tcopy(H5T_C_S1);
        H5OK(H5Tset_size(t, strlen(text) + 1));
        hid_t sp = H5Screate(H5S_SCALAR);
        hid_t d = H5Dcreate2(f, "config", t, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        H5OK(H5Dwrite(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, text));
        uint64_t h = ck.config_hash;
        hid_t asp = H5Screate(H5S_SCALAR);
        hid_t a = H5Acreate2(d, "hash", H5T_STD_U64LE, asp, H5P_DEFAULT, H5P_DEFAULT);
        H5OK(H5Awrite(a, H5T_NATIVE_UINT64, &h));
        H5Aclose(a); H5Sclose(asp); H5Dclose(d); H5Sclose(sp); H5Tclose(t);
        H5OK(H5Fclose(f));
    }
    expect_refused(bad, "/config text does not match its hash", "config text changed");

    /* an HDF5 file that is not a checkpoint at all */
    {
        hid_t f = H5Fcreate(bad, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
        H5OK(f);
        H5OK(H5Fclose(f));
    }
    expect_refused(bad, "/ has no attribute 'format'", "empty HDF5 file");

    /* the untouched files still read */
    vd_checkpoint back;
    char err[1024];
    CHECK(vd_checkpoint_read(good, &back, err, sizeof(err)) == 0, "good file: %s", err);
    vd_checkpoint_free(&back);
    vd_checkpoint_free(&ck);
}

/* Refused reads must print nothing: no HDF5-DIAG stack dump, and not HDF5 1.10's "infinite
 * loop closing library" at exit either, which follows a bad metadata checksum when HDF5's
 * automatic printing is on. Runs them in a child whose stderr is a pipe and that exits
 * through exit(), so HDF5's atexit handler runs there too. */
static void test_quiet(void) {
    printf("refused reads print nothing, not even at exit\n");
    char good[512], bad[512];
    snprintf(good, sizeof(good), "%s/surgery/good.h5", g_dir);
    snprintf(bad, sizeof(bad), "%s/quiet.h5", g_dir);
    size_t n;
    unsigned char *orig = slurp(good, &n);
    int fds[2];
    if (pipe(fds) != 0) { perror("pipe"); exit(2); }
    fflush(stdout); fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        dup2(fds[1], 2);
        vd_checkpoint ck;
        char err[1024];
        int refused = 0;
        spit(bad, orig, n / 2);                                    /* truncated */
        refused += vd_checkpoint_read(bad, &ck, err, sizeof(err)) == -1;
        /* flips in object headers (bad metadata checksums) and elsewhere */
        const size_t at[] = {97, 600, 1400, 2000, n / 3, n / 2, n - 500};
        for (size_t i = 0; i < sizeof(at) / sizeof(at[0]); i++) {
            orig[at[i]] ^= 0xFF;
            spit(bad, orig, n);
            if (vd_checkpoint_read(bad, &ck, err, sizeof(err)) == 0) vd_checkpoint_free(&ck);
            else refused++;
            orig[at[i]] ^= 0xFF;
        }
        copy_file(good, bad);
        delete_object(bad, "/optimizer");
        refused += vd_checkpoint_read(bad, &ck, err, sizeof(err)) == -1;
        refused += vd_checkpoint_read("/nonexistent/x.h5", &ck, err, sizeof(err)) == -1;
        exit(refused >= 5 ? 0 : 3);
    }
    close(fds[1]);
    char buf[8192];
    size_t len = 0;
    ssize_t k;
    while ((k = read(fds[0], buf + len, sizeof(buf) - 1 - len)) > 0) { len += (size_t)k; if (len >= sizeof(buf) - 1) break; }
    buf[len] = 0;
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d", status);
    CHECK(len == 0, "refused reads wrote to stderr:\n%s", buf);
    free(orig);
}

static void write_into_dir_file(void *arg) {
    const char *path = arg;
    vd_checkpoint ck;
    make_ck(&ck, 0);
    vd_checkpoint_write(path, &ck, 0);
}

static void write_onto_tmp_dir(void *arg) {
    const char *path = arg;
    char tmp[700];
    snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());
    vd_mkdir_p(tmp); /* the temporary name is taken by a directory: H5Fcreate fails */
    vd_checkpoint ck;
    make_ck(&ck, 0);
    vd_checkpoint_write(path, &ck, 0);
}

static void test_write_failures(void) {
    printf("write failures die naming the path\n");
    char path[512], blocker[512];
    snprintf(blocker, sizeof(blocker), "%s/afile", g_dir);
    spit(blocker, "x", 1);
    snprintf(path, sizeof(path), "%s/afile/checkpoints/step_00000001.h5", g_dir);
    CHECK_DIES(write_into_dir_file, path, "afile");
    snprintf(path, sizeof(path), "%s/wf/step_00000001.h5", g_dir);
    CHECK_DIES(write_onto_tmp_dir, path, "step_00000001.h5: cannot write checkpoint: H5Fcreate");
    CHECK(!exists(path), "a failed write produced %s", path);
}

/* A writer SIGKILLed in the middle of the file: the final name is untouched. */
static void test_kill_mid_write(int with_previous) {
    printf("SIGKILL during a write (%s previous checkpoint)\n", with_previous ? "with a" : "no");
    char out[512], path[600], tmp[700], err[1024], why[128];
    snprintf(out, sizeof(out), "%s/kill%d", g_dir, with_previous);
    vd_checkpoint_path(out, 9, path, sizeof(path));
    vd_checkpoint prev, next, back;
    make_ck(&prev, 1);
    make_ck(&next, 1);
    next.step = prev.step + 10;
    if (with_previous) vd_checkpoint_write(path, &prev, 0);
    else vd_mkdir_p(out);

    fflush(stdout); fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        vd_checkpoint_write(path, &next, 40); /* ~40 datasets x 40 ms */
        _exit(0);
    }
    snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)pid);
    for (int i = 0; i < 2000 && !exists(tmp); i++) sleep_ms(5);
    CHECK(exists(tmp), "the writer's temporary %s never appeared", tmp);
    sleep_ms(400); /* well inside the file: ~10 datasets in */
    kill(pid, SIGKILL);
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "the writer finished before the kill (status %d)", status);

    CHECK(exists(tmp), "the killed writer's temporary is gone");
    if (with_previous) {
        int rc = vd_checkpoint_read(path, &back, err, sizeof(err));
        CHECK(rc == 0, "the previous checkpoint no longer reads: %s", err);
        if (rc == 0) {
            CHECK(ck_equal(&prev, &back, why, sizeof(why)), "the previous checkpoint changed: %s", why);
            vd_checkpoint_free(&back);
        }
    } else {
        CHECK(!exists(path), "a half-written %s exists under the final name", path);
    }
    /* the half-written temporary is refused, and is not listed */
    expect_refused(tmp, NULL, "half-written temporary");
    char **paths;
    int32_t n = vd_checkpoint_list(out, &paths);
    CHECK(n == (with_previous ? 1 : 0), "list sees %d checkpoints", (int)n);
    vd_checkpoint_list_free(paths, n);
    /* prune keeps it while nothing newer exists; the next checkpoint makes it stale */
    vd_checkpoint_prune(out, 3);
    CHECK(exists(tmp), "prune removed %s while no newer checkpoint exists", tmp);
    sleep_ms(20); /* mtime granularity */
    vd_checkpoint_path(out, 19, path, sizeof(path));
    vd_checkpoint_write(path, &next, 0);
    vd_checkpoint_prune(out, 3);
    CHECK(!exists(tmp), "prune kept the stale temporary %s after a newer checkpoint", tmp);
    vd_checkpoint_free(&prev);
    vd_checkpoint_free(&next);
}

/* Files, groups, datasets, datatypes and attributes still open in this process. */
static ssize_t count_open_objects(void) { return H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL); }

int main(void) {
    snprintf(g_dir, sizeof(g_dir), "%s/vd-ckpt-test.XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(g_dir)) { perror("mkdtemp"); return 2; }
    printf("working in %s\n", g_dir);

    test_round_trip(1);
    test_round_trip(0);
    test_checksum_sensitivity();
    test_list_prune();
    test_corruption();
    test_surgery();
    test_quiet();
    test_write_failures();
    test_kill_mid_write(0);
    test_kill_mid_write(1);
    /* every read and write, failed or not, closed everything it opened */
    CHECK(count_open_objects() == 0, "%zd HDF5 objects left open", count_open_objects());

    if (!vd_test_failures && !getenv("VERA_KEEP_TMP")) {
        char cmd[512];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_dir);
        if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_dir);
    }
    TEST_END();
}
