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

/* Everything but the model and the module list: random run state, vectors and projections.
 * ck->model, modules, n_modules, max_in, max_out and target_modules are set by the caller. */
static void fill_ck(vd_checkpoint *ck, int with_proj) {
    char text[8192];
    size_t len = 0;
    /* a long, realistic configuration text (the serializer's "key = value" lines) */
    for (int i = 0; i < 150; i++)
        len += (size_t)snprintf(text + len, sizeof(text) - len, "key_%03d = value %llu\n", i, (unsigned long long)(rng_u64() % 100000));
    ck->config_text = mallocCheck(len + 1);
    memcpy(ck->config_text, text, len + 1);
    ck->config_hash = vd_hash64(ck->config_text, len, 0);
    ck->model_fingerprint = rng_u64();
    ck->r = R_RANK;
    ck->projection_prng_key = rng_u64();
    ck->step = 20 + (int64_t)(rng_u64() % 1000);
    ck->tokens_seen = rng_u64();
    ck->next_sequence = rng_u64();
    ck->global_batch_seqs = 1 + rng_u64() % 64;
    ck->world_size = 3;
    ck->dropout_seed = rng_u64();
    ck->adam_t = (int32_t)ck->step;
    ck->last_loss = rng_f() + 3.0f;

    size_t off = 0;
    for (int32_t i = 0; i < ck->n_modules; i++) {
        vd_ckpt_module *md = &ck->modules[i];
        md->off_b = off;
        md->off_d = off + (size_t)md->out;
        off += (size_t)md->out + (size_t)ck->r;
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

/* 2-layer GPT-2, n_embd 8, r 4, targets attn.c_attn (out 3C), mlp.c_fc (out 4C) and
 * mlp.c_proj (in 4C, out C): 6 modules with three different lengths; random everything. */
static void make_ck(vd_checkpoint *ck, int with_proj) {
    memset(ck, 0, sizeof(*ck));
    ck->model = (vd_gpt2_config){.max_seq_len = 16, .vocab_size = 64, .n_layer = N_LAYER, .n_head = 2,
                                 .channels = C_EMBD, .ln_eps = 1e-5f, .arch = VD_ARCH_GPT2};
    ck->max_in = 4 * C_EMBD;
    ck->max_out = 4 * C_EMBD;
    snprintf(ck->target_modules, sizeof(ck->target_modules), "attn.c_attn,mlp.c_fc,mlp.c_proj");
    const int kinds[3] = {0, 2, 3};
    const int32_t outs[4] = {3 * C_EMBD, C_EMBD, 4 * C_EMBD, C_EMBD};
    ck->modules = callocCheck(N_LAYER * 3, sizeof(vd_ckpt_module));
    for (int l = 0; l < N_LAYER; l++)
        for (int k = 0; k < 3; k++) {
            vd_ckpt_module *md = &ck->modules[ck->n_modules++];
            snprintf(md->name, sizeof(md->name), "transformer.h.%d.%s", l, k_kind_path[kinds[k]]);
            md->out = outs[kinds[k]];
        }
    fill_ck(ck, with_proj);
}

/* A Llama-3-shaped config with every field of vd_model_config set to a value that is neither
 * 0 nor its neighbour's (GQA 4 heads over 2 KV heads, head_dim 3 so q_proj is not n_embd wide,
 * llama3 RoPE scaling, biases mixed), and Llama module names: the 7 linear layers of 2 blocks,
 * 14 modules, widths 12 (q), 6 (k, v), 8 (o, down), 20 (gate, up). */
#define L_HEADS 4
#define L_KV 2
#define L_HDIM 3
#define L_FF 20
static void make_ck_llama(vd_checkpoint *ck, int with_proj) {
    memset(ck, 0, sizeof(*ck));
    ck->model = (vd_model_config){.max_seq_len = 131072, .vocab_size = 128256, .n_layer = N_LAYER, .n_head = L_HEADS,
                                  .channels = C_EMBD, .ln_eps = 1e-6f, .arch = VD_ARCH_LLAMA, .n_kv_head = L_KV,
                                  .head_dim = L_HDIM, .intermediate = L_FF, .tied = 1, .qkv_bias = 1, .o_bias = 0,
                                  .mlp_bias = 1, .rope_theta = 500000.0f, .rope_type = VD_ROPE_LLAMA3,
                                  .rope_factor = 8.0f, .rope_low_freq_factor = 1.25f, .rope_high_freq_factor = 4.5f,
                                  .rope_original_max_pos = 8192};
    snprintf(ck->model.hf_architecture, sizeof(ck->model.hf_architecture), "LlamaForCausalLM");
    ck->max_in = L_FF;
    ck->max_out = L_FF;
    snprintf(ck->target_modules, sizeof(ck->target_modules), "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj");
    static const char *const kind[7] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"};
    const int32_t outs[7] = {L_HEADS * L_HDIM, L_KV * L_HDIM, L_KV * L_HDIM, C_EMBD, L_FF, L_FF, C_EMBD};
    ck->modules = callocCheck(N_LAYER * 7, sizeof(vd_ckpt_module));
    for (int l = 0; l < N_LAYER; l++)
        for (int k = 0; k < 7; k++) {
            vd_ckpt_module *md = &ck->modules[ck->n_modules++];
            snprintf(md->name, sizeof(md->name), "model.layers.%d.%s", l, kind[k]);
            md->out = outs[k];
        }
    fill_ck(ck, with_proj);
}

/* 1 if a and b hold the same checkpoint, bit for bit; else 0 with the first difference in why. */
static int ck_equal(const vd_checkpoint *a, const vd_checkpoint *b, char *why, size_t cap) {
#define DIFF(cond, name) do { if (cond) { snprintf(why, cap, "%s differs", name); return 0; } } while (0)
    DIFF(!a->config_text || !b->config_text || strcmp(a->config_text, b->config_text), "config_text");
    DIFF(a->config_hash != b->config_hash, "config_hash");
    /* every field, bit for bit (vd_model_config has no padding; both sides start zeroed) */
    DIFF(memcmp(&a->model, &b->model, sizeof(a->model)), "model");
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

/* Replaces attribute `attr` of `obj` by a one-dimensional one of n elements. */
static void set_array_attr(const char *path, const char *obj, const char *attr, hid_t ftype, hid_t mtype, hsize_t n,
                           const void *v) {
    hid_t f = open_rw(path);
    hid_t o = H5Oopen(f, obj, H5P_DEFAULT);
    H5OK(o);
    if (H5Aexists(o, attr) > 0) H5OK(H5Adelete(o, attr));
    hid_t sp = H5Screate_simple(1, &n, NULL);
    hid_t a = H5Acreate2(o, attr, ftype, sp, H5P_DEFAULT, H5P_DEFAULT);
    H5OK(a);
    H5OK(H5Awrite(a, mtype, v));
    H5OK(H5Aclose(a));
    H5OK(H5Sclose(sp));
    H5OK(H5Oclose(o));
    H5OK(H5Fclose(f));
}

/* Replaces /adapter's module_order by names[0..n) (NUL-terminated UTF-8, as the writer does). */
static void set_module_order(const char *path, const char *const *names, int n) {
    size_t w = 1;
    for (int i = 0; i < n; i++) if (strlen(names[i]) + 1 > w) w = strlen(names[i]) + 1;
    char *buf = callocCheck((size_t)n, w);
    for (int i = 0; i < n; i++) memcpy(buf + (size_t)i * w, names[i], strlen(names[i]));
    hid_t t = H5Tcopy(H5T_C_S1);
    H5OK(H5Tset_size(t, w));
    H5OK(H5Tset_strpad(t, H5T_STR_NULLTERM));
    H5OK(H5Tset_cset(t, H5T_CSET_UTF8));
    set_array_attr(path, "/adapter", "module_order", t, t, (hsize_t)n, buf);
    H5OK(H5Tclose(t));
    free(buf);
}

/* Writes ck's module table (module_out, module_off_b, module_off_d, n_trainable) into /adapter. */
static void set_module_table(const char *path, const vd_checkpoint *ck) {
    int32_t outs[64];
    uint64_t ob[64], od[64];
    if (ck->n_modules > 64) { fprintf(stderr, "test setup: too many modules\n"); exit(2); }
    for (int32_t i = 0; i < ck->n_modules; i++) {
        outs[i] = ck->modules[i].out;
        ob[i] = ck->modules[i].off_b;
        od[i] = ck->modules[i].off_d;
    }
    hsize_t n = (hsize_t)ck->n_modules;
    set_array_attr(path, "/adapter", "module_out", H5T_STD_I32LE, H5T_NATIVE_INT32, n, outs);
    set_array_attr(path, "/adapter", "module_off_b", H5T_STD_U64LE, H5T_NATIVE_UINT64, n, ob);
    set_array_attr(path, "/adapter", "module_off_d", H5T_STD_U64LE, H5T_NATIVE_UINT64, n, od);
    uint64_t nt = ck->n_trainable;
    set_attr(path, "/adapter", "n_trainable", H5T_STD_U64LE, H5T_NATIVE_UINT64, &nt);
}

/* ---- version 1 ---- */

/* data_checksum as format version 1 defined it (docs/checkpoint-format.md before version 2),
 * written out here independently of checkpoint.c: the three arrays, a record of 21 words with
 * GPT-2's six model fields, then target_modules. */
static uint64_t v1_data_checksum(const vd_checkpoint *ck) {
    size_t nbytes = sizeof(float) * ck->n_trainable;
    uint64_t h = vd_hash64(ck->params, nbytes, 0);
    h = vd_hash64(ck->exp_avg, nbytes, h);
    h = vd_hash64(ck->exp_avg_sq, nbytes, h);
    uint32_t loss_bits, eps_bits;
    memcpy(&loss_bits, &ck->last_loss, 4);
    memcpy(&eps_bits, &ck->model.ln_eps, 4);
    const uint64_t words[21] = {
        (uint64_t)ck->step, ck->tokens_seen, ck->next_sequence, ck->global_batch_seqs, (uint64_t)(int64_t)ck->adam_t,
        (uint64_t)(int64_t)ck->world_size, ck->dropout_seed, loss_bits, ck->config_hash, ck->model_fingerprint,
        (uint64_t)(int64_t)ck->model.n_layer, (uint64_t)(int64_t)ck->model.n_head, (uint64_t)(int64_t)ck->model.channels,
        (uint64_t)(int64_t)ck->model.vocab_size, (uint64_t)(int64_t)ck->model.max_seq_len, eps_bits,
        (uint64_t)(int64_t)ck->r, (uint64_t)(int64_t)ck->max_in, (uint64_t)(int64_t)ck->max_out,
        ck->projection_prng_key, ck->projection_checksum};
    uint8_t rec[8 * 21];
    for (int i = 0; i < 21; i++)
        for (int b = 0; b < 8; b++) rec[8 * i + b] = (uint8_t)(words[i] >> (8 * b));
    h = vd_hash64(rec, sizeof(rec), h);
    return vd_hash64(ck->target_modules, strlen(ck->target_modules), h);
}

/* The attributes version 2 added (docs/checkpoint-format.md marks them "v2"). */
static const char *const k_v2_model_attrs[] = {
    "arch", "n_kv_head", "head_dim", "intermediate_size", "tie_word_embeddings", "qkv_bias", "o_bias", "mlp_bias",
    "rope_theta", "rope_type", "rope_factor", "rope_low_freq_factor", "rope_high_freq_factor",
    "rope_original_max_position_embeddings", "hf_architecture"};
static const char *const k_v2_adapter_attrs[] = {"module_out", "module_off_b", "module_off_d", "n_trainable"};

/* Turns a copy of a version-2 file of GPT-2 checkpoint ck into the file version 1 wrote for
 * it: the v2-only attributes deleted, format_version 1, the version-1 data_checksum. */
static void make_v1(const char *v2, const char *dst, const vd_checkpoint *ck) {
    copy_file(v2, dst);
    for (size_t i = 0; i < sizeof(k_v2_model_attrs) / sizeof(k_v2_model_attrs[0]); i++)
        delete_attr(dst, "/model", k_v2_model_attrs[i]);
    for (size_t i = 0; i < sizeof(k_v2_adapter_attrs) / sizeof(k_v2_adapter_attrs[0]); i++)
        delete_attr(dst, "/adapter", k_v2_adapter_attrs[i]);
    int32_t one = 1;
    set_attr(dst, "/", "format_version", H5T_STD_I32LE, H5T_NATIVE_INT32, &one);
    uint64_t h = v1_data_checksum(ck);
    set_attr(dst, "/", "data_checksum", H5T_STD_U64LE, H5T_NATIVE_UINT64, &h);
}

/* ----------------------------------------------------------------------------------------- */

static void test_round_trip(int with_proj, int llama) {
    printf("round trip, %s, %s projections\n", llama ? "Llama" : "GPT-2", with_proj ? "with" : "without");
    vd_checkpoint ck, back;
    if (llama) make_ck_llama(&ck, with_proj);
    else make_ck(&ck, with_proj);
    char path[512], tmp[600], why[128];
    snprintf(path, sizeof(path), "%s/rt%d%s/checkpoints/step_00000020.h5", g_dir, with_proj, llama ? "l" : "");
    vd_checkpoint_write(path, &ck, 0); /* also creates the checkpoints directory */
    snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());
    CHECK(exists(path), "%s not written", path);
    CHECK(!exists(tmp), "temporary %s remains after a successful write", tmp);
    char dir[512];
    snprintf(dir, sizeof(dir), "%s/rt%d%s/checkpoints", g_dir, with_proj, llama ? "l" : "");
    CHECK(count_tmp(dir) == 0, "a temporary file remains in %s", dir);

    char err[1024] = "";
    int rc = vd_checkpoint_read(path, &back, err, sizeof(err));
    CHECK(rc == 0, "read failed: %s", err);
    if (rc == 0) {
        CHECK(ck_equal(&ck, &back, why, sizeof(why)), "read back differs: %s", why);
        CHECK(back.format_version == VD_CKPT_VERSION, "format_version %d read back", (int)back.format_version);
        CHECK(memcmp(&ck.model, &back.model, sizeof(ck.model)) == 0, "model config not bit-exact");
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

/* The stored /model attributes as the format documents them: enums and hf_architecture as
 * strings, the rest int32 / float32 with the struct's values. */
static void get_str_attr(hid_t o, const char *name, char *out, size_t cap) {
    hid_t a = H5Aopen(o, name, H5P_DEFAULT);
    hid_t t = a >= 0 ? H5Aget_type(a) : -1;
    out[0] = 0;
    CHECK(a >= 0 && t >= 0 && H5Tget_class(t) == H5T_STRING && H5Tget_size(t) <= cap, "/model %s: not a string", name);
    if (a >= 0 && t >= 0 && H5Tget_class(t) == H5T_STRING && H5Tget_size(t) <= cap) {
        CHECK(H5Tget_cset(t) == H5T_CSET_UTF8 && H5Tget_strpad(t) == H5T_STR_NULLTERM, "/model %s: not NUL-terminated UTF-8", name);
        if (H5Aread(a, t, out) < 0) out[0] = 0;
        out[cap - 1] = 0;
    }
    if (t >= 0) H5Tclose(t);
    if (a >= 0) H5Aclose(a);
}

static herr_t count_attr(hid_t loc, const char *name, const H5A_info_t *info, void *data) {
    (void)loc; (void)name; (void)info;
    ++*(int *)data;
    return 0;
}

static void test_model_attributes(void) {
    printf("/model attributes of a Llama checkpoint\n");
    vd_checkpoint ck;
    make_ck_llama(&ck, 0);
    char path[512];
    snprintf(path, sizeof(path), "%s/rt0l/checkpoints/step_00000021.h5", g_dir);
    vd_checkpoint_write(path, &ck, 0);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    CHECK(f >= 0, "cannot open %s", path);
    if (f < 0) return;
    int32_t version = 0;
    hid_t a = H5Aopen(f, "format_version", H5P_DEFAULT);
    CHECK(a >= 0 && H5Aread(a, H5T_NATIVE_INT32, &version) >= 0 && version == 2, "format_version %d", (int)version);
    if (a >= 0) H5Aclose(a);
    hid_t g = H5Gopen2(f, "model", H5P_DEFAULT);
    char s[64];
    get_str_attr(g, "arch", s, sizeof(s));
    CHECK(strcmp(s, "llama") == 0, "arch '%s'", s);
    get_str_attr(g, "rope_type", s, sizeof(s));
    CHECK(strcmp(s, "llama3") == 0, "rope_type '%s'", s);
    get_str_attr(g, "hf_architecture", s, sizeof(s));
    CHECK(strcmp(s, "LlamaForCausalLM") == 0, "hf_architecture '%s'", s);
    const struct { const char *name; int32_t want; } ints[] = {
        {"n_layer", N_LAYER}, {"n_head", L_HEADS}, {"n_embd", C_EMBD}, {"vocab_size", 128256}, {"n_positions", 131072},
        {"n_kv_head", L_KV}, {"head_dim", L_HDIM}, {"intermediate_size", L_FF}, {"tie_word_embeddings", 1},
        {"qkv_bias", 1}, {"o_bias", 0}, {"mlp_bias", 1}, {"rope_original_max_position_embeddings", 8192}};
    for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++) {
        int32_t v = -12345;
        a = H5Aopen(g, ints[i].name, H5P_DEFAULT);
        hid_t t = a >= 0 ? H5Aget_type(a) : -1;
        CHECK(t >= 0 && H5Tequal(t, H5T_STD_I32LE) > 0, "/model %s is not int32 little-endian", ints[i].name);
        CHECK(a >= 0 && H5Aread(a, H5T_NATIVE_INT32, &v) >= 0 && v == ints[i].want, "/model %s = %d, want %d",
              ints[i].name, (int)v, (int)ints[i].want);
        if (t >= 0) H5Tclose(t);
        if (a >= 0) H5Aclose(a);
    }
    const struct { const char *name; float want; } floats[] = {
        {"layer_norm_epsilon", 1e-6f}, {"rope_theta", 500000.0f}, {"rope_factor", 8.0f},
        {"rope_low_freq_factor", 1.25f}, {"rope_high_freq_factor", 4.5f}};
    for (size_t i = 0; i < sizeof(floats) / sizeof(floats[0]); i++) {
        float v = -1;
        a = H5Aopen(g, floats[i].name, H5P_DEFAULT);
        hid_t t = a >= 0 ? H5Aget_type(a) : -1;
        CHECK(t >= 0 && H5Tequal(t, H5T_IEEE_F32LE) > 0, "/model %s is not float32 little-endian", floats[i].name);
        CHECK(a >= 0 && H5Aread(a, H5T_NATIVE_FLOAT, &v) >= 0 && v == floats[i].want, "/model %s = %g, want %g",
              floats[i].name, (double)v, (double)floats[i].want);
        if (t >= 0) H5Tclose(t);
        if (a >= 0) H5Aclose(a);
    }
    /* 21 config attributes + fingerprint, nothing else */
    int n_attrs = 0;
    CHECK(H5Aiterate2(g, H5_INDEX_NAME, H5_ITER_NATIVE, NULL, count_attr, &n_attrs) >= 0 && n_attrs == 22,
          "/model has %d attributes, expected 22", n_attrs);
    H5Gclose(g);
    H5Fclose(f);
    vd_checkpoint_free(&ck);
}

static void test_checksum_sensitivity(int llama) {
    printf("data checksum covers every field (%s)\n", llama ? "Llama" : "GPT-2");
    vd_checkpoint ck;
    if (llama) make_ck_llama(&ck, 0);
    else make_ck(&ck, 0);
    vd_ckpt_module *saved_modules = mallocCheck(sizeof(vd_ckpt_module) * (size_t)ck.n_modules);
    memcpy(saved_modules, ck.modules, sizeof(vd_ckpt_module) * (size_t)ck.n_modules);
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
        memcpy(ck.modules, saved_modules, sizeof(vd_ckpt_module) * (size_t)ck.n_modules); \
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
    /* every field of vd_model_config (format version 2) */
    TRY(ck.model.arch = ck.model.arch == VD_ARCH_GPT2 ? VD_ARCH_LLAMA : VD_ARCH_GPT2);
    TRY(ck.model.n_kv_head++);
    TRY(ck.model.head_dim++);
    TRY(ck.model.intermediate++);
    TRY(ck.model.tied ^= 1);
    TRY(ck.model.qkv_bias ^= 1);
    TRY(ck.model.o_bias ^= 1);
    TRY(ck.model.mlp_bias ^= 1);
    TRY(ck.model.rope_theta += 1.0f);
    TRY(ck.model.rope_type = ck.model.rope_type == VD_ROPE_DEFAULT ? VD_ROPE_LLAMA3 : VD_ROPE_DEFAULT);
    TRY(ck.model.rope_factor += 1.0f);
    TRY(ck.model.rope_low_freq_factor += 1.0f);
    TRY(ck.model.rope_high_freq_factor += 1.0f);
    TRY(ck.model.rope_original_max_pos++);
    TRY(ck.model.hf_architecture[0] = 'X');
    TRY(ck.model.hf_architecture[ck.model.hf_architecture[0] ? 1 : 0] = ck.model.hf_architecture[0] ? 0 : 'Y');
    /* the module table */
    TRY(ck.modules[3].name[0] = 'X');
    TRY(ck.modules[3].name[strlen(ck.modules[3].name) - 1]++);
    TRY(ck.modules[3].out++);
    TRY(ck.modules[3].off_b++);
    TRY(ck.modules[3].off_d++);
    TRY(ck.n_modules--);
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
    free(saved_modules);
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

    /* refused files: moved to checkpoints/refused/ byte for byte, never replacing one there;
     * neither list nor prune looks into refused/ */
    char bad[700], moved[1200], moved2[1200], want_path[800];
    vd_checkpoint_path(out, 50, bad, sizeof(bad));
    spit(bad, "truncated", 9);
    CHECK(vd_checkpoint_move_refused(out, bad, moved, sizeof(moved)) == 0, "move_refused failed");
    snprintf(want_path, sizeof(want_path), "%s/refused/step_00000050.h5", cdir);
    CHECK(strcmp(moved, want_path) == 0 && exists(moved) && !exists(bad), "moved to '%s'", moved);
    spit(bad, "other", 5);
    CHECK(vd_checkpoint_move_refused(out, bad, moved2, sizeof(moved2)) == 0, "second move_refused failed");
    CHECK(strcmp(moved2, moved) != 0 && exists(moved2) && exists(moved), "second move replaced '%s'", moved);
    {
        FILE *f = fopen(moved, "rb");
        char buf[16] = "";
        size_t got = f ? fread(buf, 1, sizeof(buf), f) : 0;
        if (f) fclose(f);
        CHECK(got == 9 && memcmp(buf, "truncated", 9) == 0, "the first refused file changed");
    }
    n = vd_checkpoint_list(out, &paths);
    CHECK(n == 1, "list sees %d checkpoints with refused/ present, expected 1", (int)n);
    vd_checkpoint_list_free(paths, n);
    vd_checkpoint_prune(out, 1);
    CHECK(exists(moved) && exists(moved2), "prune removed a refused file");
}

/* vd_checkpoint_model_difference names the first differing /model attribute */
static void test_model_difference(void) {
    printf("model difference\n");
    vd_checkpoint a, b;
    make_ck(&a, 0);
    make_ck_llama(&b, 0);
    char out[256];
    vd_model_config m = a.model;
    CHECK(vd_checkpoint_model_difference(&a.model, 2, &m, out, sizeof(out)) == 0 && out[0] == 0, "equal: '%s'", out);
    m.channels += 32;
    CHECK(vd_checkpoint_model_difference(&a.model, 2, &m, out, sizeof(out)) == 1, "n_embd difference not seen");
    char want[128];
    snprintf(want, sizeof(want), "n_embd %d in the checkpoint, %d here", (int)a.model.channels, (int)m.channels);
    CHECK(strcmp(out, want) == 0, "'%s', expected '%s'", out, want);
    m = a.model;
    m.ln_eps = 1e-6f;
    CHECK(vd_checkpoint_model_difference(&a.model, 1, &m, out, sizeof(out)) == 1 &&
              strncmp(out, "layer_norm_epsilon ", 19) == 0, "float field: '%s'", out);
    /* enums by name; rows a version does not store are skipped */
    CHECK(vd_checkpoint_model_difference(&a.model, 2, &b.model, out, sizeof(out)) == 1, "gpt2 vs llama equal");
    m = b.model;
    m.rope_type = VD_ROPE_DEFAULT;
    CHECK(vd_checkpoint_model_difference(&b.model, 2, &m, out, sizeof(out)) == 1 &&
              strcmp(out, "rope_type llama3 in the checkpoint, default here") == 0, "enum: '%s'", out);
    CHECK(vd_checkpoint_model_difference(&b.model, 1, &m, out, sizeof(out)) == 0, "version 1 compared rope_type");
    m = b.model;
    snprintf(m.hf_architecture, sizeof(m.hf_architecture), "MistralForCausalLM");
    CHECK(vd_checkpoint_model_difference(&b.model, 2, &m, out, sizeof(out)) == 1 &&
              strcmp(out, "hf_architecture 'LlamaForCausalLM' in the checkpoint, 'MistralForCausalLM' here") == 0,
          "string: '%s'", out);
    vd_checkpoint_free(&a);
    vd_checkpoint_free(&b);
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
    int32_t version = 4;
    copy_file(good, bad);
    set_attr(bad, "/", "format_version", H5T_STD_I32LE, H5T_NATIVE_INT32, &version);
    expect_refused(bad, "format_version 4 is not supported (this build reads versions 1 to 3)", "format_version 4");
    /* a VeRA file (module table) relabelled as version 3 (tensor table) */
    version = 3;
    copy_file(good, bad);
    set_attr(bad, "/", "format_version", H5T_STD_I32LE, H5T_NATIVE_INT32, &version);
    expect_refused(bad, "/adapter has no attribute 'adapter_type'", "format_version 3 without a tensor table");
    version = 0;
    copy_file(good, bad);
    set_attr(bad, "/", "format_version", H5T_STD_I32LE, H5T_NATIVE_INT32, &version);
    expect_refused(bad, "format_version 0 is not supported", "format_version 0");
    /* a version-2 file relabelled 1: read as version 1 (the v2-only attributes ignored), the
     * version-1 data_checksum cannot match */
    version = 1;
    copy_file(good, bad);
    set_attr(bad, "/", "format_version", H5T_STD_I32LE, H5T_NATIVE_INT32, &version);
    expect_refused(bad, "data_checksum mismatch", "version 2 file relabelled 1");
    copy_file(good, bad);
    set_attr_str(bad, "/", "format", "some-other-format");
    expect_refused(bad, "not a vera-dist checkpoint", "other format");
    /* The model config no longer shapes the layout (the module table does), so a changed
     * shape attribute is a checksum mismatch, and an impossible one is refused as such. */
    int32_t embd = 2 * C_EMBD;
    copy_file(good, bad);
    set_attr(bad, "/model", "n_embd", H5T_STD_I32LE, H5T_NATIVE_INT32, &embd);
    expect_refused(bad, "data_checksum mismatch", "n_embd doubled");
    int32_t layers = 3;
    copy_file(good, bad);
    set_attr(bad, "/model", "n_layer", H5T_STD_I32LE, H5T_NATIVE_INT32, &layers);
    expect_refused(bad, "data_checksum mismatch", "n_layer 3");
    int32_t embd_odd = C_EMBD + 1;
    copy_file(good, bad);
    set_attr(bad, "/model", "n_embd", H5T_STD_I32LE, H5T_NATIVE_INT32, &embd_odd);
    expect_refused(bad, "/model shape is not valid (arch gpt2, n_layer 2, n_head 2, n_embd 9", "n_embd not a multiple of n_head");
    int32_t huge = 1 << 19;
    copy_file(good, bad);
    set_attr(bad, "/model", "n_embd", H5T_STD_I32LE, H5T_NATIVE_INT32, &huge);
    int32_t mi = 4 * huge;
    set_attr(bad, "/vera", "max_in", H5T_STD_I32LE, H5T_NATIVE_INT32, &mi);
    expect_refused(bad, "too small", "huge n_embd and max_in (no huge allocation)");
    int32_t over = (1 << 24) + 1;
    copy_file(good, bad);
    set_attr(bad, "/vera", "max_in", H5T_STD_I32LE, H5T_NATIVE_INT32, &over);
    expect_refused(bad, "max_in, max_out of /vera are 16777217, 32, expected 1..16777216", "max_in over the bound");
    copy_file(good, bad);
    set_attr_str(bad, "/vera", "target_modules", "all");
    expect_refused(bad, "data_checksum mismatch", "targets all");
    copy_file(good, bad);
    set_attr_str(bad, "/vera", "target_modules", "attn.c_attn,bogus");
    expect_refused(bad, "data_checksum mismatch", "bogus targets");
    copy_file(good, bad);
    set_attr_str(bad, "/vera", "target_modules", "");
    expect_refused(bad, "attribute target_modules of /vera is empty", "empty targets");
    copy_file(good, bad);
    swap_module_order(bad);
    expect_refused(bad, "/adapter/transformer.h.0.mlp.c_fc/lambda_b has 32 elements, expected 24", "module order swapped");
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

/* The module table is checked for self-consistency, one check at a time. */
static void test_module_table(void) {
    printf("module table: self-consistency checks\n");
    vd_checkpoint ck;
    make_ck(&ck, 1);
    char good[512], bad[512], goodl[512];
    snprintf(good, sizeof(good), "%s/table/good.h5", g_dir);
    snprintf(goodl, sizeof(goodl), "%s/table/good_llama.h5", g_dir);
    snprintf(bad, sizeof(bad), "%s/table/bad.h5", g_dir);
    vd_checkpoint_write(good, &ck, 0);
    const char *names[64];
    for (int32_t i = 0; i < ck.n_modules; i++) names[i] = ck.modules[i].name;
    const int n = ck.n_modules;

    /* names: unique, non-empty, one HDF5 link name */
    copy_file(good, bad);
    names[1] = ck.modules[0].name;
    set_module_order(bad, names, n);
    names[1] = ck.modules[1].name;
    expect_refused(bad, "module_order of /adapter lists 'transformer.h.0.attn.c_attn' twice (entries 0 and 1)", "duplicate name");
    copy_file(good, bad);
    names[5] = ck.modules[2].name;
    set_module_order(bad, names, n);
    names[5] = ck.modules[5].name;
    expect_refused(bad, "lists 'transformer.h.0.mlp.c_proj' twice (entries 2 and 5)", "duplicate name, apart");
    copy_file(good, bad);
    names[2] = "";
    set_module_order(bad, names, n);
    names[2] = ck.modules[2].name;
    expect_refused(bad, "module_order of /adapter[2] is empty", "empty name");
    copy_file(good, bad);
    names[3] = "transformer/h.1.attn.c_attn";
    set_module_order(bad, names, n);
    expect_refused(bad, "module_order of /adapter[3] is 'transformer/h.1.attn.c_attn', not a module path", "name with '/'");
    copy_file(good, bad);
    names[3] = "..";
    set_module_order(bad, names, n);
    names[3] = ck.modules[3].name;
    expect_refused(bad, "module_order of /adapter[3] is '..', not a module path", "name '..'");
    copy_file(good, bad);
    set_module_order(bad, names, n - 1);
    expect_refused(bad, "attribute module_out of /adapter has 6 entries; module_order has 5", "module_order one short");
    copy_file(good, bad);
    {
        char longname[120];
        memset(longname, 'x', sizeof(longname) - 1);
        longname[sizeof(longname) - 1] = 0;
        names[0] = longname;
        set_module_order(bad, names, n);
        names[0] = ck.modules[0].name;
    }
    expect_refused(bad, "module_order of /adapter has a string size of 120 bytes (at most 96 expected)", "name too long");

    /* lengths and offsets */
    vd_checkpoint t = ck; /* shares the arrays; only t.modules is replaced below */
    vd_ckpt_module mods[64];
    memcpy(mods, ck.modules, sizeof(vd_ckpt_module) * (size_t)n);
    t.modules = mods;
#define RESET() memcpy(mods, ck.modules, sizeof(vd_ckpt_module) * (size_t)n), t.n_trainable = ck.n_trainable
    RESET();
    mods[0].out = 0;
    copy_file(good, bad);
    set_module_table(bad, &t);
    expect_refused(bad, "module 0 (transformer.h.0.attn.c_attn): lambda_b length (module_out of /adapter) is 0, expected 1..", "out 0");
    RESET();
    mods[4].out = -24;
    copy_file(good, bad);
    set_module_table(bad, &t);
    expect_refused(bad, "module 4 (transformer.h.1.mlp.c_fc): lambda_b length (module_out of /adapter) is -24", "out negative");
    RESET();
    mods[1].off_b += 1;
    mods[1].off_d += 1;
    copy_file(good, bad);
    set_module_table(bad, &t);
    expect_refused(bad, "module 1 (transformer.h.0.mlp.c_fc): module_off_b of /adapter is 29, expected 28", "gap before a module");
    RESET();
    mods[2].off_d -= 1;
    copy_file(good, bad);
    set_module_table(bad, &t);
    expect_refused(bad, "module 2 (transformer.h.0.mlp.c_proj): module_off_d of /adapter is 71, expected 72 (module_off_b + module_out)", "off_d not after lambda_b");
    RESET();
    {   /* two modules' places exchanged: offsets no longer in order */
        size_t b1 = mods[1].off_b, d1 = mods[1].off_d;
        mods[1].off_b = mods[2].off_b; mods[1].off_d = mods[2].off_b + (size_t)mods[1].out;
        mods[2].off_b = b1; mods[2].off_d = b1 + (size_t)mods[2].out;
        (void)d1;
    }
    copy_file(good, bad);
    set_module_table(bad, &t);
    expect_refused(bad, "module 1 (transformer.h.0.mlp.c_fc): module_off_b of /adapter is 64, expected 28", "offsets out of order");
    RESET();
    t.n_trainable += 1;
    copy_file(good, bad);
    set_module_table(bad, &t);
    expect_refused(bad, "attribute n_trainable of /adapter is 153; the modules' lambda_b and lambda_d lengths add up to 152", "n_trainable one more");
    RESET();
    t.n_trainable -= 4;
    copy_file(good, bad);
    set_module_table(bad, &t);
    expect_refused(bad, "n_trainable of /adapter is 148", "n_trainable short");
    RESET();
    {   /* a table consistent in itself but not with the datasets: c_attn said to be 12 long */
        mods[0].out = 12;
        size_t off = 0;
        for (int i = 0; i < n; i++) {
            mods[i].off_b = off;
            mods[i].off_d = off + (size_t)mods[i].out;
            off += (size_t)mods[i].out + (size_t)ck.r;
        }
        t.n_trainable = off;
    }
    copy_file(good, bad);
    set_module_table(bad, &t);
    expect_refused(bad, "/adapter/transformer.h.0.attn.c_attn/lambda_b has 24 elements, expected 12", "consistent table, other datasets");
    RESET();
    {   /* longer vectors than max_out */
        int32_t mo = 4 * C_EMBD - 1;
        copy_file(good, bad);
        set_attr(bad, "/vera", "max_out", H5T_STD_I32LE, H5T_NATIVE_INT32, &mo);
        expect_refused(bad, "attribute max_out of /vera is 31; the longest lambda_b (module_out of /adapter) is 32", "max_out too small");
        mo = 4 * C_EMBD + 1;
        copy_file(good, bad);
        set_attr(bad, "/vera", "max_out", H5T_STD_I32LE, H5T_NATIVE_INT32, &mo);
        expect_refused(bad, "attribute max_out of /vera is 33; the longest lambda_b", "max_out too large");
    }
    {   /* a huge but consistent table: refused for the file size, before any allocation */
        mods[n - 1].out = 1 << 24;
        size_t off = 0;
        for (int i = 0; i < n; i++) {
            mods[i].off_b = off;
            mods[i].off_d = off + (size_t)mods[i].out;
            off += (size_t)mods[i].out + (size_t)ck.r;
        }
        t.n_trainable = off;
        int32_t mo = 1 << 24;
        copy_file(good, bad);
        set_module_table(bad, &t);
        set_attr(bad, "/vera", "max_out", H5T_STD_I32LE, H5T_NATIVE_INT32, &mo);
        expect_refused(bad, "too small for the", "huge module_out (no huge allocation)");
        RESET();
        mods[n - 1].out = (1 << 24) + 1;
        copy_file(good, bad);
        set_module_table(bad, &t);
        expect_refused(bad, "lambda_b length (module_out of /adapter) is 16777217, expected 1..16777216", "module_out over the bound");
    }
#undef RESET
    /* the table's types and shapes */
    copy_file(good, bad);
    delete_attr(bad, "/adapter", "module_off_d");
    expect_refused(bad, "/adapter has no attribute 'module_off_d'", "missing module_off_d");
    copy_file(good, bad);
    delete_attr(bad, "/adapter", "n_trainable");
    expect_refused(bad, "/adapter has no attribute 'n_trainable'", "missing n_trainable");
    {
        int64_t outs64[64];
        for (int i = 0; i < n; i++) outs64[i] = ck.modules[i].out;
        copy_file(good, bad);
        set_array_attr(bad, "/adapter", "module_out", H5T_STD_I64LE, H5T_NATIVE_INT64, (hsize_t)n, outs64);
        expect_refused(bad, "attribute module_out of /adapter is not int32", "module_out int64");
        int32_t o32 = ck.modules[0].out;
        copy_file(good, bad);
        set_attr(bad, "/adapter", "module_out", H5T_STD_I32LE, H5T_NATIVE_INT32, &o32);
        expect_refused(bad, "attribute module_out of /adapter is not a one-dimensional list", "module_out scalar");
        uint64_t offs[64];
        for (int i = 0; i < n; i++) offs[i] = ck.modules[i].off_b;
        copy_file(good, bad);
        set_array_attr(bad, "/adapter", "module_off_b", H5T_STD_I64LE, H5T_NATIVE_UINT64, (hsize_t)n, offs);
        expect_refused(bad, "attribute module_off_b of /adapter is not uint64", "module_off_b signed");
        uint32_t nt32 = (uint32_t)ck.n_trainable;
        copy_file(good, bad);
        set_attr(bad, "/adapter", "n_trainable", H5T_STD_U32LE, H5T_NATIVE_UINT32, &nt32);
        expect_refused(bad, "attribute n_trainable of /adapter is not uint64", "n_trainable uint32");
    }
    /* the table is covered by data_checksum: a module renamed consistently everywhere */
    copy_file(good, bad);
    {
        hid_t f = open_rw(bad);
        H5OK(H5Lmove(f, "/adapter/transformer.h.1.mlp.c_proj", f, "/adapter/transformer.h.1.mlp.c_projX", H5P_DEFAULT, H5P_DEFAULT));
        H5OK(H5Lmove(f, "/optimizer/exp_avg/transformer.h.1.mlp.c_proj", f, "/optimizer/exp_avg/transformer.h.1.mlp.c_projX", H5P_DEFAULT, H5P_DEFAULT));
        H5OK(H5Lmove(f, "/optimizer/exp_avg_sq/transformer.h.1.mlp.c_proj", f, "/optimizer/exp_avg_sq/transformer.h.1.mlp.c_projX", H5P_DEFAULT, H5P_DEFAULT));
        H5OK(H5Fclose(f));
        char renamed[128];
        snprintf(renamed, sizeof(renamed), "%sX", ck.modules[5].name);
        names[5] = renamed;
        set_module_order(bad, names, n);
        names[5] = ck.modules[5].name;
    }
    expect_refused(bad, "data_checksum mismatch", "module renamed everywhere");

    /* the Llama file's table reads back as written, and its checks name Llama modules */
    vd_checkpoint cl;
    make_ck_llama(&cl, 0);
    vd_checkpoint_write(goodl, &cl, 0);
    copy_file(goodl, bad);
    {
        vd_checkpoint tl = cl;
        vd_ckpt_module lm[64];
        memcpy(lm, cl.modules, sizeof(vd_ckpt_module) * (size_t)cl.n_modules);
        tl.modules = lm;
        lm[8].off_b += 2; /* model.layers.1.self_attn.k_proj */
        set_module_table(bad, &tl);
    }
    expect_refused(bad, "module 8 (model.layers.1.self_attn.k_proj): module_off_b of /adapter is", "Llama gap");
    vd_checkpoint_free(&cl);

    vd_checkpoint back;
    char err[1024];
    CHECK(vd_checkpoint_read(good, &back, err, sizeof(err)) == 0, "good file: %s", err);
    vd_checkpoint_free(&back);
    vd_checkpoint_free(&ck);
}

/* /model: types, enums by name, and what no model of a family could have. */
static void test_model_checks(void) {
    printf("/model: attribute checks\n");
    vd_checkpoint ck;
    make_ck_llama(&ck, 0);
    char good[512], bad[512];
    snprintf(good, sizeof(good), "%s/modelchk/good.h5", g_dir);
    snprintf(bad, sizeof(bad), "%s/modelchk/bad.h5", g_dir);
    vd_checkpoint_write(good, &ck, 0);

    copy_file(good, bad);
    set_attr_str(bad, "/model", "arch", "mamba");
    expect_refused(bad, "attribute arch of /model is 'mamba', expected one of 'gpt2', 'llama'", "unknown arch");
    int32_t one = 1;
    copy_file(good, bad);
    set_attr(bad, "/model", "arch", H5T_STD_I32LE, H5T_NATIVE_INT32, &one);
    expect_refused(bad, "attribute arch of /model is not a string", "arch as int32");
    copy_file(good, bad);
    set_attr_str(bad, "/model", "rope_type", "yarn");
    expect_refused(bad, "attribute rope_type of /model is 'yarn', expected one of 'default', 'llama3'", "unknown rope_type");
    copy_file(good, bad);
    set_attr_str(bad, "/model", "arch", "gpt2");
    expect_refused(bad, "data_checksum mismatch", "arch llama -> gpt2");
    copy_file(good, bad);
    set_attr_str(bad, "/model", "rope_type", "default");
    expect_refused(bad, "data_checksum mismatch", "rope_type llama3 -> default");
    copy_file(good, bad);
    set_attr_str(bad, "/model", "hf_architecture", "MistralForCausalLM");
    expect_refused(bad, "data_checksum mismatch", "hf_architecture changed");
    copy_file(good, bad);
    set_attr_str(bad, "/model", "hf_architecture", "An_architecture_name_longer_than_the_field_holds_");
    expect_refused(bad, "attribute hf_architecture of /model has a string size of 50 bytes (at most 48 expected)", "hf_architecture too long");
    float theta = 10000.0f;
    copy_file(good, bad);
    set_attr(bad, "/model", "rope_theta", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, &theta);
    expect_refused(bad, "data_checksum mismatch", "rope_theta changed");
    double theta64 = 500000.0;
    copy_file(good, bad);
    set_attr(bad, "/model", "rope_theta", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &theta64);
    expect_refused(bad, "attribute rope_theta of /model is not float32", "rope_theta float64");
    int32_t kv = 3;
    copy_file(good, bad);
    set_attr(bad, "/model", "n_kv_head", H5T_STD_I32LE, H5T_NATIVE_INT32, &kv);
    expect_refused(bad, "/model shape is not valid for arch llama (n_head 4, n_kv_head 3, head_dim 3, intermediate_size 20)", "n_head not a multiple of n_kv_head");
    int32_t zero = 0;
    copy_file(good, bad);
    set_attr(bad, "/model", "head_dim", H5T_STD_I32LE, H5T_NATIVE_INT32, &zero);
    expect_refused(bad, "not valid for arch llama", "head_dim 0");
    int32_t two = 2;
    copy_file(good, bad);
    set_attr(bad, "/model", "tie_word_embeddings", H5T_STD_I32LE, H5T_NATIVE_INT32, &two);
    expect_refused(bad, "attribute tie_word_embeddings of /model is 2, expected 0 or 1", "tie_word_embeddings 2");
    copy_file(good, bad);
    delete_attr(bad, "/model", "rope_original_max_position_embeddings");
    expect_refused(bad, "/model has no attribute 'rope_original_max_position_embeddings'", "missing v2 attribute in a v2 file");
    copy_file(good, bad);
    delete_attr(bad, "/model", "hf_architecture");
    expect_refused(bad, "/model has no attribute 'hf_architecture'", "missing hf_architecture");
    /* a Llama checkpoint relabelled version 1 is read as GPT-2 and cannot verify */
    copy_file(good, bad);
    set_attr(bad, "/", "format_version", H5T_STD_I32LE, H5T_NATIVE_INT32, &one);
    expect_refused(bad, NULL, "Llama file relabelled 1");

    vd_checkpoint back;
    char err[1024];
    CHECK(vd_checkpoint_read(good, &back, err, sizeof(err)) == 0, "good file: %s", err);
    vd_checkpoint_free(&back);
    vd_checkpoint_free(&ck);
}

/* Version-1 files (GPT-2 only, before the model config and module table were stored) still
 * read, with GPT-2 defaults for the rest; their own damage is still refused. */
static void test_v1(int with_proj) {
    printf("version-1 file, %s projections\n", with_proj ? "with" : "without");
    vd_checkpoint ck, back;
    make_ck(&ck, with_proj);
    char v2[512], v1[512], bad[512], why[128], err[1024] = "";
    snprintf(v2, sizeof(v2), "%s/v1_%d/v2.h5", g_dir, with_proj);
    snprintf(v1, sizeof(v1), "%s/v1_%d/v1.h5", g_dir, with_proj);
    snprintf(bad, sizeof(bad), "%s/v1_%d/bad.h5", g_dir, with_proj);
    vd_checkpoint_write(v2, &ck, 0);
    make_v1(v2, v1, &ck);

    int rc = vd_checkpoint_read(v1, &back, err, sizeof(err));
    CHECK(rc == 0, "version-1 file refused: %s", err);
    if (rc == 0) {
        CHECK(back.format_version == 1, "format_version %d", (int)back.format_version);
        CHECK(ck_equal(&ck, &back, why, sizeof(why)), "version-1 read differs: %s", why);
        CHECK(back.model.arch == VD_ARCH_GPT2 && back.model.rope_type == VD_ROPE_DEFAULT && back.model.n_kv_head == 0 &&
              back.model.head_dim == 0 && back.model.intermediate == 0 && back.model.rope_theta == 0.0f &&
              back.model.hf_architecture[0] == 0, "version-1 defaults");
        /* the module table rebuilt from the datasets */
        for (int32_t i = 0; i < back.n_modules; i++)
            CHECK(back.modules[i].out == ck.modules[i].out && back.modules[i].off_b == ck.modules[i].off_b &&
                  back.modules[i].off_d == ck.modules[i].off_d, "module %d layout", (int)i);
        CHECK(back.n_trainable == ck.n_trainable, "n_trainable %zu", back.n_trainable);
        /* rewriting what was read gives a version-2 file with the same content */
        char again[512];
        snprintf(again, sizeof(again), "%s/v1_%d/again.h5", g_dir, with_proj);
        vd_checkpoint_write(again, &back, 0);
        vd_checkpoint back2;
        CHECK(vd_checkpoint_read(again, &back2, err, sizeof(err)) == 0, "rewritten: %s", err);
        CHECK(back2.format_version == 2 && ck_equal(&ck, &back2, why, sizeof(why)), "rewritten: %s", why);
        vd_checkpoint_free(&back2);
        vd_checkpoint_free(&back);
    }

    /* damage in a version-1 file */
    copy_file(v1, bad);
    delete_attr(bad, "/model", "n_embd");
    expect_refused(bad, "/model has no attribute 'n_embd'", "v1 missing n_embd");
    copy_file(v1, bad);
    {
        uint64_t h = vd_checkpoint_data_checksum(&ck); /* version 2's definition */
        set_attr(bad, "/", "data_checksum", H5T_STD_U64LE, H5T_NATIVE_UINT64, &h);
    }
    expect_refused(bad, "data_checksum mismatch", "v1 file with a version-2 checksum");
    copy_file(v1, bad);
    hsize_t d12[1] = {12};
    replace_dataset(bad, "/adapter/transformer.h.0.attn.c_attn/lambda_b", H5T_IEEE_F32LE, 1, d12);
    expect_refused(bad, "/optimizer/exp_avg/transformer.h.0.attn.c_attn/lambda_b has 24 elements, expected 12", "v1 short lambda_b");
    copy_file(v1, bad);
    hsize_t d40[1] = {40};
    replace_dataset(bad, "/adapter/transformer.h.1.mlp.c_fc/lambda_b", H5T_IEEE_F32LE, 1, d40);
    expect_refused(bad, "attribute max_out of /vera is 32; the longest lambda_b (module_out of /adapter) is 40", "v1 lambda_b longer than max_out");
    copy_file(v1, bad);
    hsize_t d0[1] = {0};
    replace_dataset(bad, "/adapter/transformer.h.1.mlp.c_fc/lambda_b", H5T_IEEE_F32LE, 1, d0);
    expect_refused(bad, "module 4 (transformer.h.1.mlp.c_fc): lambda_b length (module_out of /adapter) is 0", "v1 empty lambda_b");
    copy_file(v1, bad);
    hsize_t d2[2] = {4, 6};
    replace_dataset(bad, "/adapter/transformer.h.0.attn.c_attn/lambda_b", H5T_IEEE_F32LE, 2, d2);
    expect_refused(bad, "/adapter/transformer.h.0.attn.c_attn/lambda_b has 2 dimensions, expected 1", "v1 2-D lambda_b");
    copy_file(v1, bad);
    delete_object(bad, "/adapter/transformer.h.1.attn.c_attn");
    expect_refused(bad, "group /adapter/transformer.h.1.attn.c_attn is missing", "v1 missing module group");
    copy_file(v1, bad);
    swap_module_order(bad);
    expect_refused(bad, "data_checksum mismatch", "v1 module order swapped");
    copy_file(v1, bad);
    {
        const char *names[64];
        for (int32_t i = 0; i < ck.n_modules; i++) names[i] = ck.modules[i].name;
        names[3] = names[0];
        set_module_order(bad, names, ck.n_modules);
    }
    expect_refused(bad, "lists 'transformer.h.0.attn.c_attn' twice (entries 0 and 3)", "v1 duplicate name");
    int32_t layers = 3;
    copy_file(v1, bad);
    set_attr(bad, "/model", "n_layer", H5T_STD_I32LE, H5T_NATIVE_INT32, &layers);
    expect_refused(bad, "data_checksum mismatch", "v1 n_layer changed");
    copy_file(v1, bad);
    nudge_dataset(bad, "/optimizer/exp_avg/transformer.h.1.mlp.c_proj/lambda_d", 0.5f);
    expect_refused(bad, "data_checksum mismatch", "v1 changed moment");
    if (with_proj) {
        copy_file(v1, bad);
        nudge_dataset(bad, "/projection/A", 0.5f);
        expect_refused(bad, "projection_checksum", "v1 changed A");
    }
    /* a version-1 file is GPT-2: a Llama model attribute in it is not read, so it cannot
     * make the file verify as anything else */
    copy_file(v1, bad);
    set_attr_str(bad, "/model", "arch", "llama");
    rc = vd_checkpoint_read(bad, &back, err, sizeof(err));
    CHECK(rc == 0 && back.model.arch == VD_ARCH_GPT2, "v1 with an arch attribute: %s", rc ? err : "read as llama");
    if (rc == 0) vd_checkpoint_free(&back);

    /* byte flips over the version-1 file: refused, or identical data */
    size_t n;
    unsigned char *orig = slurp(v1, &n);
    unsigned char *buf = mallocCheck(n);
    g_flip_detected = g_flip_harmless = 0;
    int cases = 0;
    for (size_t o = 13; o < n; o += 211) {
        memcpy(buf, orig, n);
        buf[o] ^= 0xFF;
        spit(bad, buf, n);
        check_damaged(bad, &ck, "v1 flip");
        cases++;
    }
    printf("  %d flips: %d refused, %d harmless\n", cases, g_flip_detected, g_flip_harmless);
    CHECK(g_flip_detected > cases / 2, "only %d of %d flips in the v1 file were detected", g_flip_detected, cases);
    free(buf);
    free(orig);
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

    test_round_trip(1, 0);
    test_round_trip(0, 0);
    test_round_trip(1, 1);
    test_round_trip(0, 1);
    test_model_attributes();
    test_checksum_sensitivity(0);
    test_checksum_sensitivity(1);
    test_list_prune();
    test_model_difference();
    test_corruption();
    test_surgery();
    test_module_table();
    test_model_checks();
    test_v1(1);
    test_v1(0);
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
